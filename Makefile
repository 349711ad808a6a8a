# Two commands for a fresh machine (see README):
#   make demo   - sets up, then runs the main job end to end on generated sample data
#   make test   - sets up, then runs the test suite
# Both create the virtual environment .venv/ on first use; nothing is installed by hand.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PYTEST_ARGS ?= -q

SAMPLE := output/sample

.PHONY: venv test demo clean

venv: $(VENV)/.installed

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

test: venv
	$(PY) -m pytest $(PYTEST_ARGS) tests

# The main job end to end on generated sample data: generate -> convert -> crop
# references -> train the tiny CPU config (a full 40-epoch schedule, about 2 minutes)
# -> evaluate it on the val split (VOC / COCO table).
# Checkpoints and TensorBoard events land in output/tiny_cpu (tensorboard --logdir output/).
demo: venv
	$(PY) -m data.sample.generate --out_dir $(SAMPLE)/voc
	$(PY) tools/convert_to_tfrecord.py --format voc --image_dir $(SAMPLE)/voc/JPEGImages \
	    --annotations $(SAMPLE)/voc/Annotations \
	    --split_file $(SAMPLE)/voc/ImageSets/Main/train.txt --output_dir $(SAMPLE)/data
	$(PY) tools/convert_to_tfrecord.py --format voc --image_dir $(SAMPLE)/voc/JPEGImages \
	    --annotations $(SAMPLE)/voc/Annotations \
	    --split_file $(SAMPLE)/voc/ImageSets/Main/val.txt --output_dir $(SAMPLE)/data
	$(PY) tools/make_references.py --format voc --image_dir $(SAMPLE)/voc/JPEGImages \
	    --annotations $(SAMPLE)/voc/Annotations \
	    --split_file $(SAMPLE)/voc/ImageSets/Main/train.txt \
	    --output_dir $(SAMPLE)/references --per_class 3
	$(PY) tools/train.py --cfg cfgs/tiny_cpu.py
	$(PY) tools/eval.py --cfg cfgs/tiny_cpu.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
