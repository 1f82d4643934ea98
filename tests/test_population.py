"""One evaluated population: ``evaluate`` and ``whatif`` count the same events and tell one story."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from riskengine.cli import main
from riskengine.datasets import rba, synth
from riskengine.lab import population


def write_rba_csv(path: Path, users: int, days: int, seed: int) -> pd.DataFrame:
    """Generated logins in the public RBA dataset's CSV format, with attack-IP rows that are not takeovers:
    half the legitimate failed logins and 25 successful legitimate ones come from attack IPs."""
    events = synth.generate_events(users=users, days=days, seed=seed)
    logins = events[events["action"] == "login"].reset_index(drop=True)
    rng = np.random.default_rng(seed)
    legit = logins["label"] == 0
    attack_ip = (legit & ~logins["success"] & (rng.random(len(logins)) < 0.5)).to_numpy().copy()
    attack_ip[rng.choice(np.flatnonzero(legit & logins["success"]), 25, replace=False)] = True
    stamps = pd.to_datetime(logins["timestamp"], utc=True).dt.strftime("%Y-%m-%d %H:%M:%S.000")
    raw = pd.DataFrame({
        "index": np.arange(len(logins)), "Login Timestamp": stamps, "User ID": logins["user_id"],
        "Round-Trip Time [ms]": "", "IP Address": logins["ip"], "Country": "-", "Region": "-", "City": "-",
        "ASN": "-", "User Agent String": logins["user_agent"].fillna(""), "Browser Name and Version": "",
        "OS Name and Version": "", "Device Type": "", "Login Successful": logins["success"].map(str),
        "Is Attack IP": pd.Series(attack_ip).map(str), "Is Account Takeover": (logins["label"] == 1).map(str)})
    raw[list(rba.CSV_COLUMNS)].to_csv(path, index=False)
    return rba.load_rba(path)


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A champion trained on generated events, and an RBA-format file it never saw."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RISKENGINE_HOME", str(home))
        assert main(["generate", "--out", str(home / "events.parquet"), "--users", "150", "--days", "21",
                     "--seed", "3"]) == 0
        assert main(["train", "--data", str(home / "events.parquet"), "--promote"]) == 0
    return home


def whatif_row(stdout: str, action: str, setup: str) -> dict[str, float]:
    """One row of the what-if terminal table: counts and the three shares."""
    line = next(line for line in stdout.splitlines() if re.match(rf"{action}\s+{setup}\s", line))
    numbers = [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?", line.split(setup, 1)[1])]
    legit, step, _, _, deny, _, _, attacks, caught = numbers[:9]
    return {"legit": legit, "legit_step_up": step / 100, "legit_deny": deny / 100, "attacks": attacks,
            "caught": caught / 100}


def test_assign_names_each_group_and_describe_counts_them():
    groups = population.assign(["login"] * 5 + ["payment"], [True, False, False, True, True, True],
                               [0, 0, 1, 0, 1, 0], ["legit", "legit", "account_takeover", "attack_ip",
                                                    "account_takeover", "legit"])
    assert groups.tolist() == ["legit", "failed_login", "failed_login", "attack_traffic", "takeover", "legit"]
    assert population.evaluated(groups).tolist() == [True, False, False, False, True, True]
    assert population.describe(groups) == (
        "evaluated: 2 legitimate events and 1 takeovers; on their own: 2 failed-password logins (denied by "
        "every policy), 1 attack-traffic rows that are not takeovers (RBA Is Attack IP)")
    table = population.apart_table(groups, [0, 0, 1, 0, 1, 0], [False, True, True, False, True, False])
    assert table.to_dict("index") == {"failed_login": {"n": 2, "labelled_attacks": 1, "flagged_share": 1.0},
                                      "attack_traffic": {"n": 1, "labelled_attacks": 0, "flagged_share": 0.0}}
    with pytest.raises(ValueError, match="label has 1 rows but action has 2"):
        population.assign(["login", "login"], [True, True], [0], ["legit", "legit"])


def test_evaluate_and_whatif_count_the_same_events_and_agree_on_catch(home, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RISKENGINE_HOME", str(home))
    data = tmp_path / "rba-format.csv"
    events = write_rba_csv(data, users=120, days=14, seed=8)
    groups = population.of_frame(events)
    counted = population.counts(groups)
    assert counted["failed_login"] > 20 and counted["attack_traffic"] == 25 and counted["takeover"] > 5

    capsys.readouterr()
    assert main(["evaluate", "--data", str(data), "--window", "all", "--out", str(tmp_path / "report")]) == 0
    evaluated = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert main(["whatif", "--data", str(data), "--policy", "default"]) == 0     # a preset name, as elsewhere
    stdout = capsys.readouterr().out

    # the same events: takeovers and legitimate logins, with failed logins and attack traffic apart
    login = evaluated["at_policy"]["login"]
    current = whatif_row(stdout, "login", "current")
    assert (evaluated["n"], evaluated["attacks"]) == (counted["legit"] + counted["takeover"], counted["takeover"])
    assert (login["legit"], login["attacks"]) == (current["legit"], current["attacks"]) \
        == (counted["legit"], counted["takeover"])
    assert "attack_ip" not in evaluated["classes"]                      # not a class of takeover
    assert {k: v["n"] for k, v in evaluated["apart"].items()} == {
        "failed_login": counted["failed_login"], "attack_traffic": counted["attack_traffic"]}
    assert population.describe(groups) in stdout
    assert re.search(rf"failed_login\s+{counted['failed_login']}\s", stdout)

    # consistent catch: the model's risk at the policy's bands vs the policy's decisions in the replay
    # (the replay's history follows the model's own step-ups, the backfill's the Freeman score's)
    assert current["caught"] == pytest.approx(login["attacks_caught"], abs=0.1)
    assert current["legit_step_up"] == pytest.approx(login["legit_stepped_up"], abs=0.02)
    assert current["legit_deny"] == pytest.approx(login["legit_denied"], abs=0.01)
