"""Steps per second of the real training loop (tools/train.py), for two checkouts at once.

    python bench/train_loop.py --cfg cfgs/bccd_cpu.py --data_dir output/bccd/data \
        --reference_dir output/bccd/references --steps 1000 \
        --repo . --repo /tmp/base --rounds 2
    ONEDNN_MAX_CPU_ISA=AVX2 python bench/train_loop.py ...      # a CPU without AVX-512

What `make bccd` runs, timed from outside: tools/train.py --max_steps N into a fresh
run folder, with every hook, summary, checkpoint and the input pipeline sharing the
cores. Each checkout (--repo, repeatable: e.g. this one and a worktree of an older
commit, `git worktree add /tmp/base <commit>`) is timed with N steps and with 1 step;
steps/s = (N - 1) / (T(N) - T(1)), which removes start-up (imports, graph build, the
first checkpoint) from the figure. Rounds alternate between the checkouts, so both see
the same machine; the median over rounds is printed, and the ratio to the first repo.
--set applies to every checkout (a field an older checkout does not know fails there).
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed_run(repo, args, steps):
    """Wall seconds of tools/train.py --max_steps `steps` in `repo`, fresh run folder."""
    model_dir = tempfile.mkdtemp(prefix="bench_train_loop_")
    command = [sys.executable, os.path.join(repo, "tools", "train.py"), "--cfg",
               os.path.join(repo, args.cfg), "--data_dir", os.path.abspath(args.data_dir),
               "--reference_dir", os.path.abspath(args.reference_dir), "--model_dir",
               model_dir, "--max_steps", str(steps), *[f"--set={s}" for s in args.set]]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=repo)
    elapsed = time.perf_counter() - start
    subprocess.run(["rm", "-rf", model_dir], check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    return elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cfg", required=True, help="config path inside each repo")
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--reference_dir", required=True)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repo", action="append", help="checkout to time (repeatable; "
                        "default: this one)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], help="FIELD=VALUE")
    args = parser.parse_args()
    repos = [os.path.abspath(r) for r in (args.repo or [REPO])]
    rates = {repo: [] for repo in repos}
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "native")
    for round_index in range(args.rounds):
        for repo in repos:
            short = timed_run(repo, args, 1)
            full = timed_run(repo, args, args.steps)
            rate = (args.steps - 1) / (full - short)
            rates[repo].append(rate)
            print(f"round {round_index + 1}, {repo} ({isa}): {rate:.2f} steps/s "
                  f"({args.steps} steps in {full:.1f} s, 1 step in {short:.1f} s)",
                  flush=True)
    first = statistics.median(rates[repos[0]])
    for repo in repos:
        median = statistics.median(rates[repo])
        print(f"{repo}: median {median:.2f} steps/s over {args.rounds} round(s), "
              f"{median / first:.2f} x the first ({isa})")


if __name__ == "__main__":
    main()
