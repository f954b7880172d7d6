"""Fault injection: every fault and bad input in docs/reliability.md, tried for real, with what flcore did.

    python benchmarks/faults.py            # prints the table
    python benchmarks/faults.py --write    # also writes it into docs/reliability.md

Each case runs the ``flcore`` command line in a subprocess on a tiny experiment in a scratch folder,
injects one fault (a tampered file, a kill at a random moment, a full disk, a second writer, a
signal, a broken plugin, a numerical fault, a malformed config) and classifies the outcome: the exit
code, the first line of the message, and the checks of the case (no traceback, the run folder intact
or resumable, nothing written outside the output folder, a resumed run bit-identical to an
uninterrupted one). A case passes when flcore did what the table says it does.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
TINY = {
    "name": "tiny", "seed": 0, "dataset": "digits", "model": {"name": "mlp", "hidden": [32]},
    "federation": {"agents": 8, "rounds": 4, "sampler": {"name": "uniform", "count": 4}},
    "training": {"epochs": 1, "batch_size": 32, "optimizer": {"name": "sgd", "lr": 0.1}},
    "logging": {"loggers": ["csv"], "profiler": None, "progress": "off"},
}


@dataclass
class Outcome:
    code: int
    output: str

    @property
    def message(self) -> str:
        lines = [line for line in self.output.splitlines() if line.startswith(("error:", "warning:"))]
        return (lines[0] if lines else (self.output.strip().splitlines() or [""])[-1])[:160]


@dataclass
class Case:
    category: str
    fault: str
    expected: str
    run: Callable[[Path], tuple[Outcome, bool]]  # -> the outcome, whether every check held


def flcore(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300) -> Outcome:
    done = subprocess.run([sys.executable, "-m", "flcore.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)
    return Outcome(done.returncode, done.stdout + done.stderr)


def changed_yaml(**changes) -> str:
    """The tiny config as YAML, with ``section__field=value`` changes."""
    config = yaml.safe_load(yaml.safe_dump(TINY))
    for dotted, value in changes.items():
        node = config
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return yaml.safe_dump(config)


def write_config(folder: Path, **changes) -> Path:
    path = folder / "c.yaml"
    path.write_text(changed_yaml(**changes))
    return path


def finished_run(folder: Path, rounds: int = 2, **changes) -> Path:
    outcome = flcore("run", str(write_config(folder, federation__rounds=rounds, **changes)), "--out",
                     str(folder / "runs"), "--quiet", cwd=folder)
    assert outcome.code == 0, outcome.output
    return next((folder / "runs").iterdir())


def clean(outcome: Outcome, code: int) -> bool:
    return outcome.code == code and "Traceback" not in outcome.output


def models_equal(a: Path, b: Path) -> bool:
    left, right = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


# ------------------------------------------------------------------------------------------ cases
def flip_bit(folder: Path) -> tuple[Outcome, bool]:
    run = finished_run(folder)
    data = bytearray((run / "checkpoint.pt").read_bytes())
    data[len(data) // 2] ^= 0x10
    (run / "checkpoint.pt").write_bytes(bytes(data))
    outcome = flcore("run", "--resume", str(run), "--set", "federation.rounds=4", cwd=folder)
    return outcome, clean(outcome, 2) and "corrupt" in outcome.output


def truncate_journal(folder: Path) -> tuple[Outcome, bool]:
    run = finished_run(folder)
    journal = next((run / "agents").iterdir())
    journal.write_bytes(journal.read_bytes()[:-7])
    outcome = flcore("run", "--resume", str(run), "--set", "federation.rounds=4", cwd=folder)
    return outcome, clean(outcome, 2) and journal.name in outcome.output


def foreign_checkpoint(folder: Path) -> tuple[Outcome, bool]:
    (folder / "a").mkdir()
    (folder / "b").mkdir()
    run = finished_run(folder / "a")
    other = finished_run(folder / "b", federation__agents=12)
    (run / "checkpoint.pt").write_bytes((other / "checkpoint.pt").read_bytes())
    outcome = flcore("run", "--resume", str(run), "--set", "federation.rounds=4", cwd=folder)
    return outcome, clean(outcome, 2) and "another config" in outcome.output


def pickle_checkpoint(folder: Path) -> tuple[Outcome, bool]:
    run = finished_run(folder)
    marker = folder / "pwned"
    source = f"import pickle, os\nclass E:\n    def __reduce__(self): return (os.system, ('touch {marker}',))\n" \
             f"open({str(run / 'checkpoint.pt')!r}, 'wb').write(pickle.dumps(E()))\n"
    subprocess.run([sys.executable, "-c", source], check=True)
    outcome = flcore("run", "--resume", str(run), "--set", "federation.rounds=4", cwd=folder)
    return outcome, clean(outcome, 2) and not marker.exists()


def tampered_config(folder: Path) -> tuple[Outcome, bool]:
    run = finished_run(folder)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["model"]["hidden"] = [64]
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    outcome = flcore("run", "--resume", str(run), "--set", "federation.rounds=4", cwd=folder)
    return outcome, clean(outcome, 2) and "another config" in outcome.output


def kill_at_random(folder: Path, seed: int) -> tuple[Outcome, bool]:
    """SIGKILL after a random delay (during rounds, evaluation or a checkpoint write), then resume:
    the final model must equal an uninterrupted run's and no temporary file may remain."""
    config = write_config(folder, federation__rounds=30)
    straight = flcore("run", str(config), "--out", str(folder / "straight"), "--quiet", cwd=folder)
    assert straight.code == 0, straight.output
    victim = subprocess.Popen([sys.executable, "-m", "flcore.cli", "run", str(config), "--out",
                               str(folder / "killed"), "--quiet"], cwd=folder, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    # the delay counts from the run folder's creation: start-up alone can take longer than the
    # whole run on a loaded machine, and a kill before the folder exists tests nothing
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and victim.poll() is None and not list((folder / "killed").glob("*/config.yaml")):
        time.sleep(0.05)
    time.sleep(random.Random(seed).uniform(0.0, 4.0))
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    run = next((folder / "killed").iterdir(), None) if (folder / "killed").is_dir() else None
    if run is None:
        return Outcome(0, "killed before the run folder existed; nothing to resume"), True
    outcome = flcore("run", "--resume", str(run), "--quiet", cwd=folder)
    same = outcome.code == 0 and models_equal(next((folder / "straight").iterdir()) / "model.pt", run / "model.pt")
    leftovers = list(run.glob(".*.tmp")) + list(run.glob("agents/.*.tmp"))
    return outcome, same and not leftovers


def second_writer(folder: Path) -> tuple[Outcome, bool]:
    config = write_config(folder, federation__rounds=300)
    first = subprocess.Popen([sys.executable, "-m", "flcore.cli", "run", str(config), "--out", str(folder / "runs"),
                              "--quiet"], cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not list((folder / "runs").glob("*/checkpoint.pt")):
            time.sleep(0.05)
        run = next((folder / "runs").iterdir())
        outcome = flcore("run", "--resume", str(run), "--quiet", cwd=folder)
    finally:
        first.kill()
        first.wait()
    return outcome, clean(outcome, 2) and "being written by another flcore process" in outcome.output


def send(signum: int) -> Callable[[Path], tuple[Outcome, bool]]:
    def case(folder: Path) -> tuple[Outcome, bool]:
        config = write_config(folder, federation__rounds=300)
        # a terminal's foreground job: SIGINT at its default, even where this script runs in the
        # background (a shell starts background jobs with SIGINT ignored, and flcore respects that)
        process = subprocess.Popen([sys.executable, "-m", "flcore.cli", "run", str(config), "--out",
                                    str(folder / "runs"), "--quiet"], cwd=folder, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not list((folder / "runs").glob("*/checkpoint.pt")):
            time.sleep(0.05)
        time.sleep(0.5)
        process.send_signal(signum)
        output, _ = process.communicate(timeout=120)
        outcome = Outcome(process.returncode, output)
        return outcome, clean(outcome, 130) and "flcore run --resume" in output
    return case


def full_disk(folder: Path) -> tuple[Outcome, bool]:
    """The checkpoint write fails as a full device does (simulated: an ENOSPC from the writer)."""
    run = finished_run(folder)
    intact = (run / "checkpoint.pt").read_bytes()
    script = folder / "full.py"
    script.write_text(textwrap.dedent(f"""
        import errno, sys
        import flcore.engine.checkpoint as checkpoint
        original = checkpoint._replace_atomically
        def replace(path, write):
            if path.name == "checkpoint.pt":
                def failing(handle):
                    handle.write(b"x" * 1000)
                    raise OSError(errno.ENOSPC, "No space left on device")
                return original(path, failing)
            return original(path, write)
        checkpoint._replace_atomically = replace
        from flcore.cli import main
        sys.argv = ["flcore", "run", "--resume", {str(run)!r}, "--set", "federation.rounds=4", "--quiet"]
        main()
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=folder)
    outcome = Outcome(done.returncode, done.stdout + done.stderr)
    ok = outcome.code == 1 and "no space left" in outcome.output and (run / "checkpoint.pt").read_bytes() == intact
    return outcome, ok and not list(run.glob(".*.tmp"))


def plugin_case(source: str, expected_code: int, needle: str, strict: bool = False,
                **changes) -> Callable[[Path], tuple[Outcome, bool]]:
    """A plugin installed as a distribution on PYTHONPATH (an entry point of group flcore)."""
    def case(folder: Path) -> tuple[Outcome, bool]:
        site = folder / "site"
        dist = site / "faulty_plugin-1.0.dist-info"
        dist.mkdir(parents=True)
        (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: faulty-plugin\nVersion: 1.0\n")
        (dist / "entry_points.txt").write_text("[flcore]\nmain = faulty_mod\n")
        (site / "faulty_mod.py").write_text(textwrap.dedent(source))
        config = write_config(folder, **changes)
        env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
        flags = ["--strict"] if strict else []
        outcome = flcore("run", str(config), "--out", str(folder / "runs"), "--quiet", *flags, cwd=folder, env=env)
        return outcome, outcome.code == expected_code and needle in outcome.output and "Traceback" not in outcome.output
    return case


def config_case(text: str | bytes, needle: str) -> Callable[[Path], tuple[Outcome, bool]]:
    def case(folder: Path) -> tuple[Outcome, bool]:
        path = folder / "bad.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        validated = flcore("validate", str(path), cwd=folder)
        outcome = flcore("run", str(path), "--out", str(folder / "runs"), "--quiet", cwd=folder)
        nothing_written = not (folder / "runs").exists() or not any((folder / "runs").iterdir())
        agree = validated.code == outcome.code == 2
        return outcome, agree and needle in outcome.output and nothing_written and "Traceback" not in outcome.output
    return case


def override_case(override: str, code: int, needle: str, **changes) -> Callable[[Path], tuple[Outcome, bool]]:
    def case(folder: Path) -> tuple[Outcome, bool]:
        config = write_config(folder, **changes)
        outcome = flcore("run", str(config), "--out", str(folder / "runs"), "--quiet", "--set", override, cwd=folder)
        escaped = any(p for p in folder.parent.iterdir() if p.name.startswith("escaped"))
        return outcome, clean(outcome, code) and needle in outcome.output and not escaped
    return case


FAILING_AGENT = """
from flcore import hookimpl
from flcore.agent_plugin import AgentPlugin
class Crash(AgentPlugin):
    def on_agent_start(self, agent):
        raise RuntimeError("simulated crash in a plugin")
@hookimpl
def register_agent_plugins(register):
    register("crash", Crash, "crashes")
"""
NAN_STRATEGY = """
from flcore import hookimpl
from flcore.aggregation import Aggregator
class Nan(Aggregator):
    def aggregate(self, global_vector, updates, context):
        return global_vector * float("nan")
@hookimpl
def register_aggregators(register):
    register("nanagg", Nan, "returns NaN")
"""
SHAPE_STRATEGY = NAN_STRATEGY.replace('global_vector * float("nan")', "global_vector[:-3]").replace("nanagg", "shortagg")
BAD_SAMPLER = """
from flcore import hookimpl
from flcore.sampling import Sampler
import numpy as np
class Bad(Sampler):
    def sample(self, population, round_index, rng, available=None):
        return np.array([0, 0, 99])
@hookimpl
def register_samplers(register):
    register("badsampler", Bad, "repeats ids")
"""

CASES = [
    Case("file tampering", "a flipped bit in checkpoint.pt", "refused, exit 2, names the file", flip_bit),
    Case("file tampering", "a truncated per-agent state file", "refused, exit 2, names the file", truncate_journal),
    Case("file tampering", "the checkpoint of another run copied in", "refused, exit 2: another config",
         foreign_checkpoint),
    Case("file tampering", "a pickle that runs code, as checkpoint.pt", "refused, exit 2, no code runs",
         pickle_checkpoint),
    Case("file tampering", "config.yaml edited to another model", "refused, exit 2: another config", tampered_config),
    *[Case("kills", f"SIGKILL at a random moment (trial {i + 1}), then --resume",
           "the final model equals an uninterrupted run's; no temporary files", lambda f, i=i: kill_at_random(f, i))
      for i in range(5)],
    Case("full disk", "ENOSPC while writing checkpoint.pt", "exit 1, names the file, previous checkpoint intact",
         full_disk),
    Case("concurrent writers", "a second --resume while the run writes", "refused, exit 2, names the holder",
         second_writer),
    Case("signals", "SIGTERM (a scheduler's stop)", "exit 130 with the resume command", send(signal.SIGTERM)),
    Case("signals", "SIGINT (Ctrl-C)", "exit 130 with the resume command", send(signal.SIGINT)),
    Case("plugin faults", "a plugin whose import fails (--strict)", "exit 2 naming the distribution",
         plugin_case("raise ImportError('broken')", 2, "faulty-plugin", strict=True)),
    Case("plugin faults", "a misspelled hook (--strict)", "exit 2 with the hook it meant",
         plugin_case("from flcore import hookimpl\n@hookimpl\ndef register_aggregator(register):\n    pass\n", 2,
                     "did you mean 'register_aggregators'", strict=True)),
    Case("plugin faults", "an agent-side plugin that raises", "exit 1 naming the agent and round",
         plugin_case(FAILING_AGENT, 1, "agent ", federation__agent_plugins=["crash"])),
    Case("plugin faults", "a strategy returning NaN", "exit 1 naming the plugin and its distribution",
         plugin_case(NAN_STRATEGY, 1, "from faulty-plugin 1.0) returned non-finite", federation__aggregator="nanagg")),
    Case("plugin faults", "a strategy returning a wrong shape", "exit 1 naming the plugin and the shapes",
         plugin_case(SHAPE_STRATEGY, 1, "returned a vector of shape", federation__aggregator="shortagg")),
    Case("plugin faults", "a sampler returning repeated ids", "exit 1 naming the sampler",
         plugin_case(BAD_SAMPLER, 1, "returned an invalid selection", federation__sampler="badsampler")),
    Case("numerical faults", "lr 1e30 (agents diverge), failure policy fail", "exit 1 naming the agent and round",
         override_case("training.optimizer.lr=1e30", 1, "non-finite")),
    Case("numerical faults", "lr 1e30, failure policy skip", "exit 1: no update accepted in any round",
         override_case("training.optimizer.lr=1e30", 1, "no update was accepted", federation__on_agent_failure="skip")),
    Case("malformed configs", "an unknown key", "exit 2 naming the field",
         config_case(changed_yaml(federation__agentz=3), "federation.agentz")),
    Case("malformed configs", "a value out of range (rounds: 0)", "exit 2 naming the field and bound",
         config_case(changed_yaml(federation__rounds=0), "federation.rounds")),
    Case("malformed configs", "an unknown aggregator", "exit 2 with the closest match",
         config_case(changed_yaml(federation__aggregator="fedavgg"), "Did you mean 'fedavg'")),
    Case("malformed configs", "a plugin parameter out of range", "exit 2 naming plugin and field",
         config_case(changed_yaml(federation__aggregator={"name": "fedadam", "beta1": 1.5}), "federation.aggregator.beta1")),
    Case("malformed configs", "a binary file", "exit 2", config_case(bytes(range(256)) * 4, "error:")),
    Case("malformed configs", "not a mapping", "exit 2", config_case("- a\n- b\n", "must hold a mapping")),
    Case("malformed configs", "a name that is a path (../../escaped)", "exit 2, nothing written outside --out",
         override_case("name=../../escaped", 2, "name")),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="write the table into docs/reliability.md")
    parser.add_argument("-k", default="", help="only cases whose fault contains this text")
    args = parser.parse_args()
    rows = []
    for case in CASES:
        if args.k not in case.fault:
            continue
        with tempfile.TemporaryDirectory() as scratch:
            folder = Path(scratch) / "case"
            folder.mkdir()
            started = time.perf_counter()
            try:
                outcome, ok = case.run(folder)
            except Exception as exc:  # the harness itself failed: report it as a failed case
                outcome, ok = Outcome(-1, f"harness: {type(exc).__name__}: {exc}"), False
        seconds = time.perf_counter() - started
        rows.append((case, outcome, ok))
        print(f"{'ok  ' if ok else 'FAIL'} {case.category:18s} {case.fault:55s} exit {outcome.code:3d} "
              f"{seconds:5.1f}s  {outcome.message}", flush=True)
    held = sum(ok for _, _, ok in rows)
    table = [f"{held} of {len(rows)} cases behaved as documented (`python benchmarks/faults.py`, "
             f"{time.strftime('%Y-%m-%d')}).", "",
             "| category | fault or bad input | what flcore does | exit | message | held |", "|---|---|---|---|---|---|"]
    for case, outcome, ok in rows:
        message = outcome.message.replace("|", "\\|").replace(str(Path(tempfile.gettempdir())), "/tmp")
        table.append(f"| {case.category} | {case.fault} | {case.expected} | {outcome.code} | {message} | "
                     f"{'yes' if ok else '**no**'} |")
    text = "\n".join(table)
    print("\n" + text)
    if args.write:
        page = ROOT / "docs" / "reliability.md"
        current = page.read_text()
        start, end = "<!-- faults:start -->", "<!-- faults:end -->"
        head, _, rest = current.partition(start)
        _, _, tail = rest.partition(end)
        page.write_text(f"{head}{start}\n{text}\n{end}{tail}")
    sys.exit(0 if held == len(rows) else 1)


if __name__ == "__main__":
    main()
