# Two commands for a fresh machine (see README):
#   make demo   - sets up, then runs the main job end to end on generated sample data
#   make test   - sets up, then runs the test suite
# Both create the virtual environment .venv/ on first use; nothing is installed by hand.

# The venv's interpreter: PYTHON if given (make demo PYTHON=/usr/bin/python3.10), else
# python3 when it is 3.9-3.11 (TensorFlow 2.15's wheels), else python3.11/3.10/3.9 from
# PATH. scripts/find_python.sh chooses; when nothing fits, make stops on its one line.
PYTHON ?=
VENV   ?= .venv
PY     := $(VENV)/bin/python
PYTEST_ARGS ?= -q

SAMPLE := output/sample

.PHONY: venv test demo fewshot-demo bccd deeppcb clean

venv: $(VENV)/.installed

# Expanded only when the venv is (re)made, so other targets never run the check.
venv_python = $(eval FOUND_PYTHON := $(shell $(SHELL) scripts/find_python.sh $(PYTHON)))$(if \
    $(filter error:,$(firstword $(FOUND_PYTHON))),$(error $(FOUND_PYTHON)),$(FOUND_PYTHON))

# pip -qq: its errors only (its warnings are about the machine's pip set-up).
$(VENV)/.installed: setup.py
	$(venv_python) -m venv $(VENV)
	$(PY) -m pip install -qq --disable-pip-version-check -e '.[test]'
	touch $@

# Two pytest-xdist workers (TEST_WORKERS=0: one process), a test file at a time: a
# file's module-scoped fixtures (a trained model, a converted dataset) are built once.
# --max-worker-restart=0: a worker that crashes (a segfault in a native library) fails
# the test it was running, named, and the other worker finishes the run; restarting it
# under --dist loadfile reruns that test and can hang the run (pytest-xdist #784, seen
# in CI 2026-12-03: a segfault at 98 %, then 80 minutes idle until CI's timeout).
TEST_WORKERS ?= 2
test: venv
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --max-worker-restart=0 $(PYTEST_ARGS) tests

# The main job end to end on generated sample data: generate -> convert -> crop
# references -> train the tiny CPU config (a full 40-epoch schedule, about 2 minutes)
# -> evaluate it on the val split (VOC / COCO table) -> export a SavedModel -> draw its
# detections on the sample images.
# Checkpoints and TensorBoard events land in output/tiny_cpu (tensorboard --logdir output/),
# the SavedModel in output/tiny_cpu/export, the drawn images in output/tiny_cpu/predictions.
# $(call prepare_voc,VOC folder,output folder,references per class): TFRecords of the
# train and val splits in <output>/data, references cropped from train in
# <output>/references.
define prepare_voc
	$(PY) tools/convert_to_tfrecord.py --format voc --image_dir $(1)/JPEGImages \
	    --annotations $(1)/Annotations \
	    --split_file $(1)/ImageSets/Main/train.txt --output_dir $(2)/data
	$(PY) tools/convert_to_tfrecord.py --format voc --image_dir $(1)/JPEGImages \
	    --annotations $(1)/Annotations \
	    --split_file $(1)/ImageSets/Main/val.txt --output_dir $(2)/data
	$(PY) tools/make_references.py --format voc --image_dir $(1)/JPEGImages \
	    --annotations $(1)/Annotations \
	    --split_file $(1)/ImageSets/Main/train.txt \
	    --output_dir $(2)/references --per_class $(3)
endef

demo: venv
	$(PY) -m data.sample.generate --out_dir $(SAMPLE)/voc
	$(call prepare_voc,$(SAMPLE)/voc,$(SAMPLE),3)
	$(PY) tools/train.py --cfg cfgs/tiny_cpu.py
	$(PY) tools/eval.py --cfg cfgs/tiny_cpu.py
	$(PY) tools/export_savedmodel.py --cfg cfgs/tiny_cpu.py --overwrite
	$(PY) tools/predict.py --saved_model output/tiny_cpu/export \
	    --images $(SAMPLE)/voc/JPEGImages --output_dir output/tiny_cpu/predictions

# ImageNet weights of a backbone, from the package setup.py installed, as a TF checkpoint
# in output/pretrained/<name> (tools/import_backbone.py; a few seconds, nothing downloaded).
define import_backbone
	$(PY) tools/import_backbone.py --name $(1)
endef

# Add a class from a few examples, end to end on generated data (README): the tiny model
# on ImageNet features (cfgs/tiny_fewshot.py) trained on cells and crystals; spores, which
# its training images never show, join from 3 crops dropped into its reference set;
# export (no retraining), evaluate on images of all three, draw the detections.
FEWSHOT := output/fewshot_sample
fewshot-demo: venv
	$(call import_backbone,efficientnet_lite0)
	$(PY) -m data.sample.generate --out_dir $(FEWSHOT)/base_voc --num_train 72 \
	    --num_val 4 --classes cell,crystal
	$(PY) -m data.sample.generate --out_dir $(FEWSHOT)/voc --num_train 12 --num_val 12 \
	    --seed 1 --classes cell,crystal,spore
	$(call prepare_voc,$(FEWSHOT)/base_voc,$(FEWSHOT)/base,3)
	$(PY) tools/train.py --cfg cfgs/tiny_fewshot.py --data_dir $(FEWSHOT)/base/data \
	    --reference_dir $(FEWSHOT)/base/references
	$(PY) tools/make_references.py --format voc --image_dir $(FEWSHOT)/voc/JPEGImages \
	    --annotations $(FEWSHOT)/voc/Annotations \
	    --split_file $(FEWSHOT)/voc/ImageSets/Main/train.txt --classes spore \
	    --per_class 3 --output_dir $(FEWSHOT)/spore_crops
	rm -rf $(FEWSHOT)/references_plus_spore
	cp -r $(FEWSHOT)/base/references $(FEWSHOT)/references_plus_spore
	cp -r $(FEWSHOT)/spore_crops/spore $(FEWSHOT)/references_plus_spore/
	$(PY) tools/export_savedmodel.py --cfg cfgs/tiny_fewshot.py \
	    --data_dir $(FEWSHOT)/base/data --reference_dir $(FEWSHOT)/references_plus_spore \
	    --overwrite
	$(PY) tools/convert_to_tfrecord.py --format voc --image_dir $(FEWSHOT)/voc/JPEGImages \
	    --annotations $(FEWSHOT)/voc/Annotations \
	    --split_file $(FEWSHOT)/voc/ImageSets/Main/val.txt --output_dir $(FEWSHOT)/data
	$(PY) tools/eval.py --cfg cfgs/tiny_fewshot.py --data_dir $(FEWSHOT)/data \
	    --reference_dir $(FEWSHOT)/references_plus_spore --novel_classes spore
	$(PY) tools/predict.py --saved_model output/tiny_fewshot/export \
	    --images $(FEWSHOT)/voc/JPEGImages --output_dir output/tiny_fewshot/predictions

# Real data: BCCD (blood cells, VOC) from ../shared, trained from ImageNet weights on the
# CPU within a time budget, then evaluated on val (docs/results.md). The budget covers
# the whole train.py command: after a warm-up that measures the speed, the config's
# schedule is shortened to fit if it must (steps and LR boundaries together,
# docs/training.md) and recorded in output/bccd_cpu/schedule.json, which a rerun keeps.
BCCD ?= ../shared/datasets/bccd
BCCD_MINUTES ?= 30
bccd: venv
	$(call import_backbone,efficientnet_lite0)
	$(call prepare_voc,$(BCCD),output/bccd,5)
	$(PY) tools/train.py --cfg cfgs/bccd_cpu.py --max_minutes $(BCCD_MINUTES)
	$(PY) tools/eval.py --cfg cfgs/bccd_cpu.py

# Real data: DeepPCB (circuit-board defects, VOC, one-channel JPEGs stored as RGB by the
# converter) from ../shared, from ImageNet weights within a 60-minute budget, on val.
DEEPPCB ?= ../shared/datasets/deeppcb
DEEPPCB_MINUTES ?= 60
deeppcb: venv
	$(call import_backbone,efficientnet_lite0)
	$(call prepare_voc,$(DEEPPCB),output/deeppcb,5)
	$(PY) tools/train.py --cfg cfgs/deeppcb_cpu.py --max_minutes $(DEEPPCB_MINUTES)
	$(PY) tools/eval.py --cfg cfgs/deeppcb_cpu.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
