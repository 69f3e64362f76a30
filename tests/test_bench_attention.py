"""bench/attention_check.py: one record per (dtype, head dim) as it is checked, and its report."""
from bench_scripts import report, script

attention_check = script("attention_check")


def test_attention_check_records_each_check_and_reports_it(tmp_path):
    argv = ["--device", "cpu", "--batch", "1", "--heads", "2", "--tokens", "16", "--head-dims", "64", "80",
            "--reps", "1", "--out", str(tmp_path)]
    assert attention_check.main(argv) == 0
    r = report(tmp_path, "attention-*.jsonl")
    assert r["end"] is not None and r["bench"] == "attention" and r["tokens"] == 16
    assert [(c["dtype"], c["head_dim"]) for c in r["rows"]] == [("fp32", 64), ("fp32", 80)]
    for c in r["rows"]:        # the explicit computation runs everywhere and is exact to fp32
        assert c["backends"]["math"]["runs"] and c["backends"]["math"]["out_rel_err"] < 1e-5
        assert c["backends"]["math"]["ms"] > 0
    md = r["path"].with_suffix(".md").read_text()
    assert "| fp32 | 80 | math" in md and "`--attention auto`: fp32:" in md
