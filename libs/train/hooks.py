"""SessionRunHooks of the training and evaluation loops.

    FiniteLossGuard        stops training at the first non-finite loss or gradient, with
                           one line naming the step and the value that went bad, before
                           any checkpoint of that step is written
    SpeedMeter             measures steps per second over a warm-up, then stops
                           training (libs/train/time_budget.py)
    RefitHook              measures the settled speed after the warm-up and asks a
                           callback whether the schedule changes (then stops training)
    StopAfterTimeHook      stops when the time budget is spent, in the last LR stage
                           only (train.py --max_minutes)
    ProgressHook           a Progress line: evaluated images, or training steps and loss
    SaveTimer              a CheckpointSaverListener timing each checkpoint save

The guard only works if it runs before the CheckpointSaverHook in the same session:
libs.train.training passes [guard, its own CheckpointSaverHook] as the Estimator's hooks (the
Estimator then adds no saver of its own, and MonitoredSession calls after_run in list
order). An exception raised in after_run ends the session without the savers' end(), so
the weights of the bad step are never saved and the latest checkpoint is the last good
one.
"""
import math

from absl import logging

from libs.base.errors import UserError
from libs.base.tf_compat import tf

# Graph collection of the scalars the guard checks, filled by model_fn in every tower.
GUARDED_VALUES = "finite_guard_values"
_SCOPE = "finite_guard"


class NonFiniteLossError(UserError):
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


class _SteadyRate(StepCounter):
    """Times the steps of a session after its first `skip_steps` (>= 1): graph
    optimisation and first allocations make those slow. window_full(): at least
    `min_steps` timed over at least `window_seconds`; steady_rate(): the rate of the
    second half of the timed steps (steps keep speeding up for a while after the first
    ones: caches, allocator; the steady rate is the one that lasts), None if the clock
    did not move."""

    def __init__(self, clock, window_seconds, skip_steps, min_steps):
        super().__init__()
        self.clock = clock
        self.window_seconds = window_seconds
        self.skip_steps = skip_steps
        self.min_steps = min_steps
        self._runs = 0
        self._step_ends = []       # clock at the end of each step from skip_steps on

    @property
    def steady_since(self):
        return self._step_ends[0] if self._step_ends else None

    @property
    def timed_steps(self):
        return max(len(self._step_ends) - 1, 0)

    def time_step(self):
        self._runs += 1
        if self._runs >= self.skip_steps:
            self._step_ends.append(self.clock())

    def window_full(self):
        return (self.timed_steps >= self.min_steps and
                self._step_ends[-1] - self._step_ends[0] >= self.window_seconds)

    def steady_rate(self):
        half = (self.timed_steps + 1) // 2
        seconds = self._step_ends[-1] - self._step_ends[-1 - half]
        return half / seconds if seconds > 0 else None


class SpeedMeter(_SteadyRate):
    """Measures training steps per second, then asks training to stop.

    Times steps (_SteadyRate) until `window_seconds` have passed and at least
    `min_steps` were timed, and requests a stop (the Estimator then saves a checkpoint,
    which the next train call resumes from). Afterwards: steps_per_second (None if the
    clock did not move, or training ended first), steady_since (the clock when the
    untimed first steps had run) and step (the global step reached).
    """

    def __init__(self, clock, window_seconds, skip_steps, min_steps):
        super().__init__(clock, window_seconds, skip_steps, min_steps)
        self.steps_per_second = None

    def after_run(self, run_context, run_values):
        super().after_run(run_context, run_values)
        self.time_step()
        if not self.window_full():
            return
        self.steps_per_second = self.steady_rate()
        run_context.request_stop()


class RefitHook(_SteadyRate):
    """Measures the settled training speed once, then lets `decide` re-fit the schedule.

    Times steps as SpeedMeter does; once `window_seconds` have been timed (at least
    `min_steps` steps), or the global step reaches `last_step`, it calls
    decide(steps_per_second, global step) once. `decide` returns a new config when the
    schedule changes: the hook keeps it (`fitted`) and requests a stop (the Estimator
    saves a checkpoint there; training goes on under the new schedule); None lets
    training go on as it is. With fewer than `min_steps` timed by `last_step` nothing
    is decided.
    """

    def __init__(self, clock, window_seconds, skip_steps, min_steps, last_step, decide):
        super().__init__(clock, window_seconds, skip_steps, min_steps)
        self.last_step = last_step
        self.decide = decide
        self.fitted = None
        self.done = False

    def after_run(self, run_context, run_values):
        super().after_run(run_context, run_values)
        if self.done:
            return
        self.time_step()
        if not self.window_full() and self.step < self.last_step:
            return
        self.done = True
        rate = self.steady_rate() if self.timed_steps >= self.min_steps else None
        if rate is None:
            return
        self.fitted = self.decide(rate, self.step)
        if self.fitted is not None:
            run_context.request_stop()


class SaveTimer(tf.estimator.CheckpointSaverListener):
    """Times each checkpoint save, from the saver's start to its end (the file writes
    only). Afterwards: seconds, one entry per save; last_seconds (None before any)."""

    def __init__(self, clock):
        self.clock = clock
        self.seconds = []
        self._started = None

    @property
    def last_seconds(self):
        return self.seconds[-1] if self.seconds else None

    def before_save(self, session, global_step_value):
        self._started = self.clock()

    def after_save(self, session, global_step_value):
        if self._started is not None:
            self.seconds.append(self.clock() - self._started)
            self._started = None


class StopAfterTimeHook(StepCounter):
    """Stops training once the time budget is spent, but only in the last LR stage.

    `budget` is a libs.train.time_budget.TimeBudget whose schedule of `total_steps` was
    fitted to it, `last_boundary` its last LR boundary (0 for a constant LR). Before a
    step has run at the last LR, running out of time does not stop training: a budget
    never cuts a run before its LR has decayed. It only catches a machine that got
    slower after the warm-up; the Estimator then writes its final checkpoint there.
    """

    def __init__(self, budget, last_boundary, total_steps):
        super().__init__()
        self.budget = budget
        self.last_boundary = last_boundary
        self.total_steps = total_steps
        self.stopped_at = None

    def after_run(self, run_context, run_values):
        super().after_run(run_context, run_values)
        # The step that just ran read global step self.step - 1; piecewise_constant
        # gives the last LR to steps that read more than the last boundary.
        in_last_stage = self.step - 1 > self.last_boundary
        if (self.stopped_at is None and in_last_stage
                and self.budget.remaining() <= self.budget.margin_seconds):
            self.stopped_at = self.step
            logging.warning("time budget of %g minutes spent at step %d, in the last LR "
                            "stage (from step %d): stopping %d steps short of the "
                            "schedule's %d", self.budget.minutes, self.step,
                            self.last_boundary, self.total_steps - self.step,
                            self.total_steps)
            run_context.request_stop()


class ProgressHook(StepCounter):
    """Advances a libs.base.io_utils.Progress line after every run.

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
