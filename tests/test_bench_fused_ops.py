"""bench/fused_ops.py: its defaults per device (bf16 in one process on a GPU, where training runs
the ops; float32 with a process per measurement on a CPU) and a run that records a failed
measurement and goes on with the next."""
import json

from bench_scripts import script

fused_ops = script("fused_ops")
records = script("records")


def test_a_gpu_run_defaults_to_bf16_triton_in_one_process():
    args = fused_ops.with_defaults(fused_ops.build_parser().parse_args(["--device", "cuda"]))
    assert (args.dtype, args.processes, args.backends) == ("bfloat16", "one", ["reference", "triton"])
    args = fused_ops.with_defaults(fused_ops.build_parser().parse_args(["--device", "cpu"]))
    assert (args.dtype, args.processes, args.backends) == ("float32", "each", ["reference", "cpp"])
    args = fused_ops.with_defaults(fused_ops.build_parser().parse_args(["--device", "cuda", "--dtype", "float16"]))
    assert args.dtype == "float16"


def test_a_failed_measurement_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    measure = fused_ops.measure

    def broken(shape, op, backend, *rest, **kw):
        if op == "decoder_input":
            raise RuntimeError("the kernel broke (test)")
        return measure(shape, op, backend, *rest, **kw)

    monkeypatch.setattr(fused_ops, "measure", broken)
    status = fused_ops.main(["--device", "cpu", "--backends", "reference", "--shapes", "vit_b", "--batch", "1",
                             "--reps", "1", "--processes", "one", "--out", str(tmp_path)])
    assert status == 1
    (path,) = tmp_path.glob("fused-ops-*.jsonl")
    header, rows, end = records.read_records(path)
    assert end is not None and header["processes"] == "one" and header["dtype"] == "float32"
    assert [(r["op"], r["status"]) for r in rows] == [
        ("visible_patch_embed", "ok"), ("decoder_input", "failed"), ("masked_mse", "ok")]
    assert "the kernel broke" in rows[1]["error"] and rows[0]["ms"] > 0 and rows[0]["peak_mib"] is None
    md = path.with_suffix(".md").read_text()
    assert "decoder_input / reference: RuntimeError: the kernel broke (test)" in md and "| n/a |" in md
    assert json.loads(path.read_text().splitlines()[1])["record"] == "row"
