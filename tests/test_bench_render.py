"""bench/render.py, the one renderer: every committed result's records make exactly the committed
report (its tables, its numbers), and the records reader keeps what a killed run wrote."""
import json
import shutil
from pathlib import Path

import pytest

from bench_scripts import BENCH, script

harness = script("harness")
render = script("render")

RESULTS = sorted((BENCH / "results").glob("*.jsonl"))


def test_every_committed_result_is_a_known_bench_with_its_report():
    benches = {json.loads(p.read_text().splitlines()[0])["bench"] for p in RESULTS}
    assert benches <= set(render.LAYOUTS) and len(benches) >= 6
    assert all(p.with_suffix(".md").exists() for p in RESULTS)


@pytest.mark.parametrize("records", RESULTS, ids=[p.stem for p in RESULTS])
def test_committed_records_make_the_committed_report(records, tmp_path):
    copy = tmp_path / records.name
    shutil.copy(records, copy)
    assert render.render(copy).read_text() == records.with_suffix(".md").read_text()


def _write(path: Path, lines: list) -> Path:
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_a_line_cut_short_at_the_end_is_left_out_and_any_other_bad_line_is_an_error(tmp_path):
    run = {"record": "run", "bench": "fused-ops"}
    row = {"record": "row", "shape": "vit_b", "op": "masked_mse", "backend": "reference", "ms": 2.0, "peak_mib": 1.0}
    path = _write(tmp_path / "r.jsonl", [run, row])
    with open(path, "a") as f:
        f.write(json.dumps(row)[:20])           # the write a kill interrupted
    header, rows, end = harness.read_records(path)
    assert header["bench"] == "fused-ops" and rows == [{k: v for k, v in row.items() if k != "record"}]
    assert end is None
    path.write_text(json.dumps(run) + "\n{not json\n" + json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=":2: not a JSON record"):
        harness.read_records(path)
    _write(path, [row])
    with pytest.raises(ValueError, match="not a bench records file"):
        harness.read_records(path)


def test_records_are_on_disk_as_each_is_added(tmp_path):
    """Each record is a whole line in the file when `add` returns, before the run ends; the end
    record is written only when the run finishes without an exception."""
    with harness.Records(tmp_path / "x", "fused-ops", {"machine": "m"}) as rec:
        rec.add({"ms": 1.5})
        lines = (tmp_path / "x.jsonl").read_text().splitlines()
        assert [json.loads(x)["record"] for x in lines] == ["run", "row"]
    assert json.loads((tmp_path / "x.jsonl").read_text().splitlines()[-1])["record"] == "end"
    with pytest.raises(RuntimeError):
        with harness.Records(tmp_path / "y", "fused-ops", {}) as rec:
            rec.add({"ms": 1.5})
            raise RuntimeError("the run breaks")
    assert harness.read_records(tmp_path / "y.jsonl")[2] is None


def test_render_command_renders_a_folders_records_without_a_report(tmp_path, capsys):
    shutil.copy(BENCH / "results" / "fused-ops-cpu-amd-epyc.jsonl", tmp_path)
    assert render.main([str(tmp_path)]) == 0
    assert (tmp_path / "fused-ops-cpu-amd-epyc.md").exists() and "wrote" in capsys.readouterr().out
    assert render.main([str(tmp_path)]) == 0 and "nothing to render" in capsys.readouterr().out
    assert render.main([str(tmp_path / "missing.jsonl")]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_result_names_follow_one_rule(tmp_path):
    stem = harness.result_stem(tmp_path / "out", "throughput", "cpu-AMD EPYC 7B13 x2", "vit_s", "fp32", "", "eager")
    assert stem == tmp_path / "out" / "throughput-cpu-amd-epyc-7b13-x2-vit_s-fp32-eager"
    assert (tmp_path / "out").is_dir()
    assert harness.slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
