"""`reconcile split-brain` on the embedded simulated demo: the recovery as a plan, its dry run
(prints the plan, changes no file), the real recovery victim then survivor, and the refusal
while an agent holds the node's lock."""

from __future__ import annotations

from pathlib import Path

from adapters.sim.world import World
from reconciler.cli import try_agent_lock
from tests.test_operator_cli import run, split_brained_world

VIP = "198.51.100.3"


def snapshot(state: Path) -> dict[str, bytes]:
    """Every file of the state directory, but the world store's flock file: any reader of the
    simulated world (a dry run too) creates it, empty, to lock the world file while reading."""
    files = {str(p.relative_to(state)): p.read_bytes() for p in sorted(state.rglob("*"))}
    assert files.pop("sim-world.json.lock", b"") == b""
    return files


def world_but_clock(state: Path) -> str:
    """The simulated world without its clock (every observation is a step of simulated time)."""
    world = World.model_validate_json((state / "sim-world.json").read_text())
    return world.model_dump_json(exclude={"step_count"})


def split_brained_state(tmp_path: Path) -> None:
    w = split_brained_world(tmp_path)
    (tmp_path / "sim-world.json").write_text(w.model_dump_json())


def test_dry_run_prints_the_plan_and_changes_nothing(tmp_path: Path) -> None:
    split_brained_state(tmp_path)
    before = snapshot(tmp_path)
    assert "sim-world.json" in before

    victim = run(tmp_path, "split-brain", "iscsi1", "--survivor", "node2", "--node", "node1",
                 "--dry-run")  # fmt: skip
    assert victim.returncode == 0, victim.stderr
    header, *lines = victim.stdout.splitlines()
    assert header.startswith("SIMULATED: ")  # the demo's adapters are 'sim'
    assert lines[0] == (
        "node1: should be Secondary (split-brain recovery: node1 is the VICTIM: its writes to "
        "iscsi1 since the split are discarded) (dry run: nothing applied)"
    )
    assert lines[1:5] == [
        "  1. stop-target - victim: stop serving before its data is discarded",
        f"  2. remove-vip {VIP} - victim: release the VIP for the survivor",
        "  3. demote iscsi1 - victim: iscsi1 must be Secondary to discard its data",
        "  4. connect-discard-my-data iscsi1 - victim: reconnect discarding its writes to iscsi1 "
        "since the split; it resyncs from the survivor",
    ]
    assert "Dry run: nothing was changed" in victim.stdout
    assert "put in manual mode as Secondary" in victim.stdout

    survivor = run(tmp_path, "split-brain", "iscsi1", "--survivor", "node2", "--node", "node2",
                   "--dry-run")  # fmt: skip
    assert survivor.returncode == 0, survivor.stderr
    assert "  1. connect iscsi1 - survivor: reconnect iscsi1" in survivor.stdout
    assert "  2." not in survivor.stdout

    # --dry-run needs no --yes, and an unknown survivor is still a usage error.
    bad = run(tmp_path, "split-brain", "iscsi1", "--survivor", "nodeX", "--node", "node1",
              "--dry-run")  # fmt: skip
    assert bad.returncode == 2 and "is not a node of the spec" in bad.stderr

    assert snapshot(tmp_path) == before  # no world change, no operator state, no lock file


def test_dry_run_refused_when_not_in_split_brain(tmp_path: Path) -> None:
    run(tmp_path, "--once", "--node", "node1")
    r = run(tmp_path, "split-brain", "iscsi1", "--survivor", "node1", "--node", "node2",
            "--dry-run")  # fmt: skip
    assert r.returncode == 3 and "not in split brain" in r.stderr


def test_recovery_runs_as_a_plan_victim_then_survivor(tmp_path: Path) -> None:
    split_brained_state(tmp_path)
    victim = run(tmp_path, "split-brain", "iscsi1", "--survivor", "node1", "--node", "node2",
                 "--yes")  # fmt: skip
    assert victim.returncode == 0, victim.stderr
    assert "  1. connect-discard-my-data iscsi1 - victim: " in victim.stdout
    assert victim.stdout.splitlines()[2].endswith(" ok")  # after the SIMULATED line
    assert "Done on node2. Now run it on the survivor." in victim.stdout
    shown = run(tmp_path, "manual-mode", "show", "--node", "node2")
    assert shown.stdout.splitlines()[-1] == "node2: manual mode on; chosen role: Secondary"
    # An agent tick on either node between the halves plans no reconnect and no promotion.
    for node in ("node2", "node1"):
        between = run(tmp_path, "--once", "--node", node, "--json")
        assert '"kind": "connect' not in between.stdout
        assert '"kind": "promote"' not in between.stdout
    survivor = run(tmp_path, "split-brain", "iscsi1", "--survivor", "node1", "--node", "node1",
                   "--yes")  # fmt: skip
    assert survivor.returncode == 0, survivor.stderr
    assert "  1. connect iscsi1 - survivor: " in survivor.stdout and " ok" in survivor.stdout
    assert "Resync follows" in survivor.stdout
    for _ in range(3):
        run(tmp_path, "--once", "--node", "node1")
        run(tmp_path, "--once", "--node", "node2")
    again = run(tmp_path, "split-brain", "iscsi1", "--survivor", "node1", "--node", "node2",
                "--dry-run")  # fmt: skip
    assert again.returncode == 3 and "Connected, not in split brain" in again.stderr
    assert run(tmp_path, "manual-mode", "disable", "--node", "node2").returncode == 0


def test_recovery_refused_while_an_agent_holds_the_lock(tmp_path: Path) -> None:
    split_brained_state(tmp_path)
    before = world_but_clock(tmp_path)
    with try_agent_lock(tmp_path, "node2") as holder:
        assert holder is None  # this test process holds it, like a running agent would
        r = run(tmp_path, "split-brain", "iscsi1", "--survivor", "node1", "--node", "node2",
                "--yes")  # fmt: skip
        dry = run(tmp_path, "split-brain", "iscsi1", "--survivor", "node1", "--node", "node2",
                  "--dry-run")  # fmt: skip
    assert r.returncode == 3 and "is acting for node2" in r.stderr and "stop it" in r.stderr
    assert dry.returncode == 0, dry.stderr  # a dry run changes nothing: no lock needed
    assert world_but_clock(tmp_path) == before  # the refused recovery only observed
    assert not (tmp_path / "operator-node2.json").exists()
