"""SessionRunHooks of the training and evaluation loops.

    FiniteLossGuard        stops training at the first non-finite loss or gradient, with
                           one line naming the step and the value that went bad, before
                           any checkpoint of that step is written
    StopAfterTimeHook      a wall-time budget (train.py --max_minutes)
    ProgressHook           a Progress line: evaluated images, or training steps and loss

The guard only works if it runs before the CheckpointSaverHook in the same session:
libs.training passes [guard, its own CheckpointSaverHook] as the Estimator's hooks (the
Estimator then adds no saver of its own, and MonitoredSession calls after_run in list
order). An exception raised in after_run ends the session without the savers' end(), so
the weights of the bad step are never saved and the latest checkpoint is the last good
one.
"""
import math
import time

from absl import logging

from libs.tf_compat import tf

# Graph collection of the scalars the guard checks, filled by model_fn in every tower.
GUARDED_VALUES = "finite_guard_values"
_SCOPE = "finite_guard"


class NonFiniteLossError(ValueError):
    """Training met a NaN or infinite loss; the message is one line for the user."""


def guard_values(values):
    """Adds {readable name: scalar tensor} to the guard's collection (call per tower)."""
    with tf.name_scope(_SCOPE):
        for name, value in values.items():
            op_name = name.replace("/", "__")
            tf.add_to_collection(GUARDED_VALUES, tf.identity(value, name=op_name))


def _readable(tensor):
    """'tower_1/finite_guard/fast_rcnn__cls_loss:0' -> 'fast_rcnn/cls_loss (tower_1)'."""
    path = tensor.op.name.split("/")
    where = "/".join(path[:path.index(_SCOPE)]) if _SCOPE in path else ""
    name = path[-1].replace("__", "/")
    return f"{name} ({where.rstrip('/')})" if where else name


class StepCounter(tf.train.SessionRunHook):
    """Knows the global step after each run without fetching it: read once when the
    session starts, then one per run (a fetch of global_step in the same run may see it
    before or after the increment)."""

    def __init__(self):
        self.step = None

    def after_create_session(self, session, coord):
        self.step = int(session.run(tf.train.get_global_step()))

    def after_run(self, run_context, run_values):
        self.step += 1


class FiniteLossGuard(StepCounter):
    """Raises NonFiniteLossError after the first step whose guarded values are not finite.

    `model_dir` only serves the message (which checkpoint is the last good one).
    """

    def __init__(self, model_dir):
        super().__init__()
        self.model_dir = model_dir
        self._tensors = None
        self._names = None

    def begin(self):
        self._tensors = tf.get_collection(GUARDED_VALUES)
        self._names = [_readable(t) for t in self._tensors]

    def before_run(self, run_context):
        return tf.train.SessionRunArgs(self._tensors)

    def after_run(self, run_context, run_values):
        super().after_run(run_context, run_values)        # self.step: the step that ran
        bad = [(name, float(value)) for name, value in zip(self._names, run_values.results)
               if not math.isfinite(float(value))]
        if not bad:
            return
        step = self.step
        latest = tf.train.latest_checkpoint(self.model_dir)
        kept = (f"the latest checkpoint {latest} is the last good one" if latest
                else "no checkpoint had been written yet")
        described = ", ".join(f"{name} = {value}" for name, value in bad[:3])
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        raise NonFiniteLossError(
            f"non-finite value at training step {step}: {described}{more}; training "
            f"stopped before saving this step, {kept}. Lower LR or check the data "
            f"of this step")


class StopAfterTimeHook(tf.train.SessionRunHook):
    """Asks training to stop once `minutes` of wall time have passed since it began.

    A time budget on shared machines: the Estimator then writes its final checkpoint
    as at max_steps, so the run resumes from there when rerun.
    """

    def __init__(self, minutes):
        self._clock = time.monotonic
        self.limit_seconds = float(minutes) * 60.0
        self.stopped_early = False
        self._start = None

    def begin(self):
        self._start = self._clock()

    def after_run(self, run_context, run_values):
        if self._clock() - self._start >= self.limit_seconds and not self.stopped_early:
            self.stopped_early = True
            logging.warning("time budget of %.1f minutes reached: stopping and saving a "
                            "checkpoint", self.limit_seconds / 60.0)
            run_context.request_stop()


class ProgressHook(StepCounter):
    """Advances a libs.io_utils.Progress line after every run.

    Evaluation (batches of one): one image per run. With `training`, the line counts
    global steps, starting from the step of the first session (a resumed run), and
    shows the loss: the towers' mean total loss, the value FiniteLossGuard fetches
    anyway, so showing it costs no computation.
    """

    def __init__(self, progress, training=False):
        super().__init__()
        self.progress = progress
        self.training = training
        self._loss = []
        self._started = False

    def begin(self):
        if self.training:
            self._loss = [tensor for tensor in tf.get_collection(GUARDED_VALUES)
                          if _readable(tensor).split(" ")[0] == "total_loss"]

    def after_create_session(self, session, coord):
        if self.training:
            super().after_create_session(session, coord)
        count = self.step if self.training else self.progress.count
        if self._started:
            self.progress.count = count      # a second train call resumes where we were
        else:
            self.progress.begin_at(count)    # rate and ETA from here, not the graph build
            self._started = True

    def before_run(self, run_context):
        return tf.train.SessionRunArgs(self._loss) if self._loss else None

    def after_run(self, run_context, run_values):
        if not self.training:
            self.progress.update()
            return
        super().after_run(run_context, run_values)
        losses = [float(value) for value in (run_values.results or [])]
        self.progress.update(**({"loss": sum(losses) / len(losses)} if losses else {}))
