"""Where a run's towers run: CPU/GPU devices, distribution strategies, TF_CONFIG clusters
and the session config every session of the project uses."""
import json
import os

from absl import logging

from libs.base.tf_compat import tf
from libs.train.runs import TrainingError


def ensure_cpu_devices(count):
    """Splits the CPU into `count` logical devices (must run before TF starts).

    Returns the number of logical CPU devices available afterwards.
    """
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(count)])
    except RuntimeError:
        pass  # already initialised: keep whatever split exists
    return len(tf.config.list_logical_devices("CPU"))


def tower_devices(cfg):
    """One device per GPU_GROUPS entry; CPU logical devices when there is no GPU."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        if len(gpus) < cfg.NUM_GPUS:
            raise TrainingError(f"GPU_GROUPS asks for {cfg.NUM_GPUS} GPUs, this machine "
                                f"has {len(gpus)}")
        return list(cfg.GPU_GROUPS)
    devices = [f"/cpu:{i}" for i in range(cfg.NUM_GPUS)]
    if cfg.NUM_GPUS > 1:
        available = ensure_cpu_devices(cfg.NUM_GPUS)
        if available < cfg.NUM_GPUS:
            raise TrainingError(f"{cfg.NUM_GPUS} towers need {cfg.NUM_GPUS} CPU devices "
                                f"but TensorFlow started with {available}")
        logging.warning("No GPU found: the %d towers of GPU_GROUPS %s run on CPU devices "
                        "%s", cfg.NUM_GPUS, list(cfg.GPU_GROUPS), devices)
    return devices


class ClusterTask:
    """This process's place in a multi-worker cluster, read from TF_CONFIG."""

    def __init__(self, task_type, index, num_workers, is_chief):
        self.task_type = task_type
        self.index = index
        self.num_workers = num_workers
        self.is_chief = is_chief

    def __str__(self):
        role = "chief" if self.is_chief else "not chief"
        return f"{self.task_type}:{self.index} of {self.num_workers} workers ({role})"


def cluster_task(environ=None):
    """The ClusterTask that TF_CONFIG describes, or None for one process on its own.

    TF_CONFIG is tf.distribute's own convention: {"cluster": {"chief": [host:port],
    "worker": [host:port, ...]}, "task": {"type": "worker", "index": 0}}. The chief
    (or worker 0 without a chief) writes checkpoints and summaries.
    """
    raw = (os.environ if environ is None else environ).get("TF_CONFIG", "").strip()
    if not raw:
        return None
    try:
        config = json.loads(raw)
        cluster, task = dict(config.get("cluster") or {}), dict(config.get("task") or {})
    except (ValueError, TypeError, AttributeError) as exc:
        raise TrainingError(f"TF_CONFIG is not a JSON object with 'cluster' and 'task': "
                            f"{exc}") from exc
    unsupported = sorted(set(cluster) - {"chief", "worker"})
    if unsupported:
        raise TrainingError(f"TF_CONFIG cluster has {unsupported} tasks: only 'chief' and "
                            f"'worker' are supported (MultiWorkerMirroredStrategy)")
    num_workers = len(cluster.get("chief", [])) + len(cluster.get("worker", []))
    if num_workers <= 1:
        return None
    task_type, index = task.get("type"), task.get("index", 0)
    if task_type not in cluster or not isinstance(index, int) or not (
            0 <= index < len(cluster[task_type])):
        raise TrainingError(f"TF_CONFIG task {task} is not one of the cluster's tasks "
                            f"{ {name: len(hosts) for name, hosts in cluster.items()} }")
    is_chief = task_type == "chief" or ("chief" not in cluster and index == 0)
    return ClusterTask(task_type, index, num_workers, is_chief)


# Collectives wait at most this long for a peer; a worker that died then fails the
# others instead of hanging them for ever.
COLLECTIVE_TIMEOUT_SECONDS = 300


def make_strategy(cfg):
    """(strategy or None, tower devices): MultiWorkerMirroredStrategy when TF_CONFIG
    names a cluster, MirroredStrategy over several towers, None for one tower."""
    if cluster_task() is not None:
        strategy = tf.distribute.experimental.MultiWorkerMirroredStrategy()
        # The v1 strategy takes no CommunicationOptions argument; its extended object
        # reads them when the Estimator's coordinator configures it for this task, so
        # the timeout goes there (TF 2.15, the version this project pins).
        strategy.extended._communication_options = (  # pylint: disable=protected-access
            tf.distribute.experimental.CommunicationOptions(
                timeout_seconds=COLLECTIVE_TIMEOUT_SECONDS))
        return strategy, ["/cpu:0"]
    devices = tower_devices(cfg)
    if len(devices) == 1:
        return None, devices
    return tf.distribute.MirroredStrategy(devices), devices


def session_config(num_cpu_devices=1):
    """The ConfigProto of every session the project opens.

    Without a GPU, grappler's memory optimizer (GPU swapping/recomputation) has nothing
    to gain, and its cost model prints a multi-line "Error in PredictCost()" warning
    for every crop_and_resize with a dynamic box count, burying the training log.
    """
    from tensorflow.core.protobuf import rewriter_config_pb2
    config = tf.ConfigProto(allow_soft_placement=True,
                            device_count={"CPU": max(1, num_cpu_devices)})
    if not tf.config.list_physical_devices("GPU"):
        config.graph_options.rewrite_options.memory_optimization = \
            rewriter_config_pb2.RewriterConfig.OFF
    return config


def worker_scratch_dir(model_dir, task):
    """Where a non-chief worker's throwaway checkpoints and summaries go."""
    return os.path.join(model_dir, f"tmp_{task.task_type}_{task.index}")
