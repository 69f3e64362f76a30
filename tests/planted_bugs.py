"""Plant known bugs in the engine one at a time and check that the test meant to guard against
each one fails. Run from the repository root (not collected by pytest):

    python tests/planted_bugs.py            # every planted bug (a few minutes on 2 cores)
    python tests/planted_bugs.py --list
    python tests/planted_bugs.py ddp-grad-sum stale-index-ignored

Each bug is a literal text replacement in one file, written to disk, the named tests run, and the
original bytes put back (also on Ctrl-C). It refuses to touch a file with uncommitted changes.
A bug "is caught" when pytest exits non-zero having run a test (exit code 5, no test ran, is not);
one that is not caught makes this script exit 1. The bugs whose tests run the official code
(`official_checkout`) run them with `-m official_checkout` where a checkout exists, and are listed
as not run where none does.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Bug:
    name: str
    file: str
    edits: tuple            # ((old, new), ...): each old text must occur exactly once
    tests: tuple            # pytest node ids expected to fail
    what: str
    official_checkout: bool = False     # its tests run the official code: opt-in, need a checkout


def edit(old, new):
    return ((old, new),)


BUGS = [
    Bug("planner-allocates-the-batch", "vmae2_fast/data/pixels.py",
        edit('return video.device.type == "cpu" and not is_fake(video)', 'return video.device.type == "cpu"'),
        ("tests/test_pixels.py::test_a_fake_batch_is_normalised_without_memory",),
        "the planner's fake batch normalised into a real NumPy buffer of the planned size"),
    Bug("fake-constants-cached", "vmae2_fast/data/pixels.py",
        edit("    if detect_fake_mode() is not None:\n        return make()\n", ""),
        ("tests/test_pixels.py::test_a_fake_batch_is_normalised_without_memory",),
        "the normalisation constants made inside the planner's trace are cached for real runs"),
    Bug("cpp-build-waits-on-dead-lock", "vmae2_fast/ops/cpp.py",
        edit("            stale.unlink(missing_ok=True)", "            pass"),
        ("tests/test_first_use.py::test_a_build_killed_half_way_does_not_hang_the_next_run",),
        "a `lock` file left by a killed C++ build makes every later run wait forever"),
    Bug("plan-counts-parameter-views", "vmae2_fast/memory/trace.py",
        edit("self._existing = {id(t.untyped_storage()) for t in existing}", "self._existing = set()"),
        ("tests/test_plan.py::test_plan_matches_the_allocations_of_a_real_step[vit_s-full-fp32-4]",),
        "a view of a parameter (w.t() in every linear) is counted as a new allocation"),
    Bug("plan-cuda-norms-on-cpu", "vmae2_fast/memory/trace.py",
        edit('if spec.device == "cuda" and type(m) is nn.LayerNorm:', "if type(m) is nn.LayerNorm:"),
        ("tests/test_plan.py::test_plan_matches_the_allocations_of_a_real_step[vit_s-2-bf16-4]",),
        "CUDA autocast's float32 layer norm traced for a CPU plan too"),
    Bug("plan-batch-freed-early", "vmae2_fast/memory/trace.py",
        edit("    return loss, video\n", "    return loss, None\n"),
        ("tests/test_plan.py::test_plan_matches_the_allocations_of_a_real_step[vit_micro-full-bf16-8]",),
        "the clip batch dies after the forward, though the loop holds it through the step"),
    Bug("fp8-never-refused", "vmae2_fast/train/parallelize.py",
        edit("        if cap < FP8_MIN_CAPABILITY:", "        if False:"),
        ("tests/test_fp8.py::test_fp8_is_refused_below_sm89_with_the_reason",),
        "--fp8 on an A100 (no FP8 tensor cores) is not refused"),
    Bug("mfu-counts-every-process", "vmae2_fast/train/metrics.py",
        edit("    per_s = clips / wall_s", "    per_s = 2 * clips / wall_s"),
        ("tests/test_mfu.py::test_a_cpu_run_logs_mfu_hfu_and_peak_memory",),
        "TFLOP/s and MFU from twice the clips one device ran"),
    Bug("stale-index-ignored", "vmae2_fast/data/loaders.py",
        edit("        return None\n    return load_index(list_file, data_root, **opts)",
             "        return None\n    return None"),
        ("tests/test_index.py::test_pyav_training_refuses_a_stale_index",),
        "an existing index is never read, so a stale one is not refused"),
    Bug("resume-starts-over", "vmae2_fast/train/checkpoint_writer.py",
        edit("return self.out / LAST if (self.out / LAST).exists() else latest_checkpoint(self.out)",
             "return None"),
        ("tests/test_pretrain_loop.py::test_kill_and_resume",),
        "--resume auto ignores the checkpoint and retrains from step 0 (same final weights!)"),
    Bug("ddp-per-process-denominator", "vmae2_fast/stages/pretrain.py",
        edit("denominator = all_reduce_sum(count, self.dist) / self.dist.world_size",
             "denominator = count"),
        ("tests/test_ddp_gradients.py::test_two_processes_give_the_one_process_gradients[pretrain]",),
        "each process divides by its own loss-token count (the official behaviour)"),
    Bug("ddp-grad-sum", "vmae2_fast/train/loop.py",
        edit("scaled = loss / len(batches)", "scaled = loss * self.dist.world_size / len(batches)"),
        ("tests/test_pretrain_loop.py::test_ddp_two_processes_match_one",),
        "gradients summed over processes instead of averaged (N times too large)"),
    Bug("fsdp-ranks-start-apart", "vmae2_fast/train/parallelize.py",
        edit("            torch.distributed.broadcast(t, src=0)", "            pass"),
        ("tests/test_fsdp.py::test_fsdp_two_processes_train_like_one",),
        "each FSDP process keeps its shard of its own initialisation, not rank 0's"),
    Bug("fsdp-optimizer-not-resumed", "vmae2_fast/train/loop.py",
        edit('            load_optimizer(self.stage.model, self.optimizer, path, state["sharded"], self.dist)',
             "            pass"),
        ("tests/test_fsdp.py::test_two_fsdp_processes_resume_in_one",),
        "an FSDP checkpoint resumes with a fresh AdamW state (its shards are not read)"),
    Bug("classify-loss-summed", "vmae2_fast/stages/classify.py",
        edit("label_smoothing=self.cfg.smoothing)",
             "label_smoothing=self.cfg.smoothing, reduction='sum')"),
        ("tests/test_ddp_gradients.py::test_two_processes_give_the_one_process_gradients[classify]",),
        "the classification loss sums over clips: its gradient depends on the per-process batch"),
    Bug("tubelet-fixed-at-2", "vmae2_fast/models/pretrain.py",
        edit("self.patch_size, self.tubelet_size,", "self.patch_size, 2,"),
        ("tests/test_pretrain_options.py::test_model_loss_and_gradients_equal_the_official_computation",
         "tests/test_pretrain_options.py::test_first_logged_loss_of_a_cli_run_is_the_official_loss[tubelet-4]"),
        "the loss targets assume tubelet 2 (the official reshape)"),
    Bug("model-always-normalises", "vmae2_fast/models/pretrain.py",
        edit("normalize=self.normalize_target,", "normalize=True,"),
        ("tests/test_pretrain_options.py::test_model_loss_and_gradients_equal_the_official_computation",),
        "normalize_target=False is ignored by the model"),
    Bug("cli-drops-normalize-target", "vmae2_fast/stages/pretrain.py",
        edit("normalize_target=cfg.normalize_target,", "normalize_target=True,"),
        ("tests/test_pretrain_options.py::test_first_logged_loss_of_a_cli_run_is_the_official_loss[no-normalize-target]",),
        "--no-normalize-target is parsed but never reaches the model (the official bug)"),
    Bug("decoder-choice-not-logged", "vmae2_fast/data/loaders.py",
        edit("    if log_choice:\n", "    if False:\n"),
        ("tests/test_decoder_choice.py",),
        "--decoder auto chooses silently"),
    Bug("auto-never-picks-dali", "vmae2_fast/data/loaders.py",
        edit('choice, why = "dali", f"auto: training on a GPU', 'choice, why = "pyav", f"auto: training on a GPU'),
        ("tests/test_decoder_choice.py::test_auto_chooses_and_says_why",),
        "--decoder auto uses PyAV on a GPU even with DALI installed"),
    Bug("kl-direction-swapped", "vmae2_fast/stages/classify.py",
        edit("F.kl_div(F.log_softmax(logits.float() / tau, -1), F.log_softmax(t_logits.float() / tau, -1),",
             "F.kl_div(F.log_softmax(t_logits.float() / tau, -1), F.log_softmax(logits.float() / tau, -1),"),
        ("tests/test_distill.py::test_first_logged_loss_is_kl_teacher_to_student_at_the_temperature",),
        "KL(student || teacher) instead of KL(teacher || student)"),
    Bug("kl-without-tau-squared", "vmae2_fast/stages/classify.py",
        edit('reduction="batchmean", log_target=True) * tau * tau', 'reduction="batchmean", log_target=True)'),
        ("tests/test_distill.py::test_first_logged_loss_is_kl_teacher_to_student_at_the_temperature",),
        "the tau^2 gradient correction is missing"),
    Bug("teacher-not-frozen", "vmae2_fast/stages/classify.py",
        edit("        p.requires_grad_(False)\n", "        p.requires_grad_(True)\n"),
        ("tests/test_distill.py::test_the_teacher_stays_frozen_while_the_student_learns",),
        "the teacher's parameters require grad"),
    Bug("teacher-in-train-mode", "vmae2_fast/stages/classify.py",
        edit("teacher = teacher.to(device=device, dtype=dtype).eval()",
             "teacher = teacher.to(device=device, dtype=dtype).train()"),
        ("tests/test_distill.py::test_the_teacher_stays_frozen_while_the_student_learns",),
        "the teacher runs in train mode (dropout, drop path active)"),
    Bug("features-ignore-no-imagenet-norm", "vmae2_fast/stages/features.py",
        edit("    if imagenet_norm:\n", "    if True:\n"),
        ("tests/test_extract_features.py",),
        "--no-imagenet-norm has no effect"),
    Bug("features-ignore-frame-stride", "vmae2_fast/stages/features.py",
        edit("yield start, torch.stack(list(buf)[::frame_stride])", "yield start, torch.stack(list(buf)[-window:])"),
        ("tests/test_extract_features.py",),
        "windows take consecutive frames whatever --frame-stride says"),
    Bug("evaluate-averages-logits", "vmae2_fast/stages/evaluate.py",
        edit("    per_view = logits.log_softmax(-1).view(n_videos, -1, logits.shape[-1])\n"
             "    return torch.logsumexp(per_view, dim=1) - math.log(per_view.shape[1])",
             "    return logits.view(n_videos, -1, logits.shape[-1]).mean(1).log_softmax(-1)"),
        ("tests/test_classify_stages.py::test_evaluate_fuses_the_softmax_of_every_view",),
        "views are fused by averaging logits, not probabilities"),
    Bug("evaluate-crops-centred", "vmae2_fast/data/clip_sampling.py",
        edit("for c in spread_offsets(max(rw, rh), size, num_crops):",
             "for c in spread_offsets(max(rw, rh), size, 1) * num_crops:"),
        ("tests/test_classify_stages.py::test_evaluate_fuses_the_softmax_of_every_view",),
        "the C spatial crops are all the centre crop"),
    Bug("randaugment-does-nothing", "vmae2_fast/data/pyav/randaugment.py",
        edit("        if not plan:\n", "        if True:\n"),
        ("tests/test_finetune_data.py",),
        "RandAugment returns the clip unchanged"),
    Bug("optimizer-state-misrouted", "vmae2_fast/train/optim.py",
        edit('        group["params"].append(p)\n',
             '        group["params"].insert(0 if raw_name != name else len(group["params"]), p)\n'),
        ("tests/test_optim.py",),
        "a wrapped model's groups list their parameters in another order: a loaded state goes to "
        "the wrong parameters (load_state_dict accepts it: same group sizes)"),
    Bug("batch-skips-not-recorded", "vmae2_fast/train/loop.py",
        edit("            self.skips.add(b.skipped)\n", "            self.skips.add(())\n"),
        ("tests/test_records.py::test_a_corpus_with_ten_percent_bad_videos_trains_to_the_end",),
        "the loop reads the batch but not its skipped videos: bad files are never counted or listed"),
    Bug("batch-noise-not-pinned", "vmae2_fast/data/batches.py",
        edit("    if isinstance(obj, list):\n        return [map_tensors(x, fn) for x in obj]\n", ""),
        ("tests/test_batches.py",),
        "pin-memory and the copy-ahead feed skip the erasing noise (a list in ClassifyBatch): it "
        "crosses to the GPU inside the step, from pageable memory"),
    Bug("pyav-erasing-box-transposed", "vmae2_fast/data/transforms.py",
        edit("    box = random_erasing_box(h, w, rng, prob)\n", "    box = random_erasing_box(w, h, rng, prob)\n"),
        ("tests/test_finetune_data.py",),
        "the PyAV erasing rectangle is drawn for a transposed frame: another draw than DALI's, and "
        "out of bounds on non-square clips"),
    Bug("seek-to-the-clip-not-its-keyframe", "vmae2_fast/data/pyav/video_io.py",
        edit("        return None if k < 0 else (self.key_frames[k], self.key_positions[k])",
             "        return None if k < 0 else (frame, self.frame_of_packet.index(frame))"),
        ("tests/test_video_seeking.py::test_decoded_frames_equal_a_full_decode",),
        "the decoder starts at the clip's first frame instead of the keyframe before it (frames "
        "predicted from references it never decoded)"),
    Bug("frame-number-off-by-one-after-seek", "vmae2_fast/data/pyav/video_io.py",
        edit("            self.frame_of_pts = {pts: i for i, pts in enumerate(sorted(shown))}",
             "            self.frame_of_pts = {pts: i + 1 for i, pts in enumerate(sorted(shown))}"),
        ("tests/test_video_seeking.py::test_decoded_frames_equal_a_full_decode",),
        "after a seek, frames are numbered one off: every clip is shifted by a frame"),
    Bug("wanted-frames-skipped-as-non-reference", "vmae2_fast/data/pyav/video_io.py",
        edit("                        skip = frame is not None and frame not in keep",
             "                        skip = frame is not None"),
        ("tests/test_video_seeking.py::test_decoded_frames_equal_a_full_decode",),
        "wanted non-reference frames are dropped too (caught by the gap check, which then decodes "
        "every clip from frame 0)"),
    Bug("host-normalisation-one-channel", "vmae2_fast/data/pixels.py",
        edit("                o.mul_(a[c]).add_(b[c])         # x * 1/(255 std) - mean/std",
             "                o.mul_(a[0]).add_(b[0])         # x * 1/(255 std) - mean/std"),
        ("tests/test_pixels.py",),
        "the CPU normalisation uses the red channel's constants for all three"),
    Bug("triton-accepts-cpu-tensors", "kernels/_common.py",
        edit('if dev.type == "cpu" and not interpreter_active():', "if False:"),
        ("tests/test_ops_backends.py::test_triton_refuses_plain_cpu_tensors_without_the_interpreter",),
        "the Triton ops take CPU tensors without the interpreter (and fail obscurely)"),
    Bug("triton-third-tile-misplaced", "kernels/_common.py",
        edit("    r = tl.program_id(axis) * BLOCK + tl.arange(0, BLOCK)",
             "    r = tl.minimum(tl.program_id(axis), 1) * BLOCK + tl.arange(0, BLOCK)"),
        ("tests/test_op_patch_embed.py::test_backend_matches_reference[tiles-p14-b3-r0.6-triton]",),
        "the embedding kernel's third row (and column) tile recomputes the second one's rows"),
    Bug("triton-mask-token-rows-misplaced", "kernels/decoder_assembly.py",
        edit("        rm = (pid_m - n_vis_blocks) * BLOCK_M + tl.arange(0, BLOCK_M)",
             "        rm = tl.minimum(pid_m - n_vis_blocks, 1) * BLOCK_M + tl.arange(0, BLOCK_M)"),
        ("tests/test_op_decoder_assembly.py::test_backend_matches_reference[tiles-p14-b3-r0.6-triton]",),
        "the decoder kernel fills the third tile of mask-token rows with the second's"),
    Bug("async-checkpoint-without-host-copy", "vmae2_fast/train/checkpoint_writer.py",
        edit('            state = host_copy(state, skip=("model",) if self.sharded and self.dist.enabled else ())',
             "            pass"),
        ("tests/test_async_checkpoint.py::test_background_saves_write_the_state_of_the_save_point",),
        "--async-checkpoint writes the live tensors: the file holds weights of later steps"),
    Bug("restart-refused-its-own-lock", "vmae2_fast/train/run_lock.py",
        edit('    if held.get("job") and held.get("job") == me["job"]:', "    if False:"),
        ("tests/test_run_lock.py::test_an_elastic_restart_takes_its_own_lock_back_from_another_node",),
        "an elastic restart on another node is refused the folder its own dead rank 0 held"),
    Bug("hang-not-named", "vmae2_fast/train/loop.py",
        edit('                    if failed == "timeout":', "                    if False:"),
        ("tests/test_elastic.py::test_a_stalled_rank_ends_the_run_with_an_error_naming_it",),
        "a timed-out collective ends the run with gloo's traceback, not the rank that hung"),
    Bug("any-valueerror-is-a-user-error", "vmae2_fast/cli.py",
        edit("    except (UserError, RunStopped) as e:", "    except (ValueError, RunStopped) as e:"),
        ("tests/test_user_errors.py::test_only_the_user_error_family_becomes_exit_code_2",),
        "a ValueError raised by a bug prints `error:` and exit code 2: the traceback is lost"),
    Bug("ci-missing-package-skips", "tests/needs.py",
        edit("    if on_ci() or not missing:\n", "    if not missing:\n"),
        ("tests/test_skip_policy.py",),
        "on CI a missing package of the test extra skips instead of failing"),
    Bug("ci-plain-skip-allowed", "tests/conftest.py",
        edit('and not torch.cuda.is_available() and "gpu" not in item.keywords):', "and False):"),
        ("tests/test_skip_policy.py::test_on_ci_only_gpu_tests_may_skip",),
        "on CI a test that is not marked gpu may skip for any reason"),
    Bug("predict-ignores-views", "vmae2_fast/stages/predict.py",
        edit("view = clip_settings(cfg, config, cfg.test_views())", "view = clip_settings(cfg, config)"),
        ("tests/test_predict.py::test_predictions_equal_evaluate_and_the_views_made_by_hand",),
        "predict --views TxS always predicts from the single centred view"),
    Bug("predict-skips-silently", "vmae2_fast/stages/predict.py",
        edit('                log.warning("skipped %s: %s", path, reason)\n', ""),
        ("tests/test_predict.py::test_unreadable_videos_are_skipped_and_reported_with_frame_folders_and_workers",),
        "an unreadable video is dropped without a word"),
    Bug("predict-class-list-unchecked", "vmae2_fast/stages/predict.py",
        edit("if len(names) != num_classes:", "if False:"),
        ("tests/test_predict.py::test_bad_inputs_are_errors_with_exit_code_2",),
        "a --classes file of the wrong length names the classes wrongly (or crashes) instead of an error"),
    Bug("onnx-fixed-batch", "vmae2_fast/integrations/onnx.py",
        edit('dynamic_shapes=({0: torch.export.Dim("batch")},))', "dynamic_shapes=None)"),
        ("tests/test_onnx_export.py::test_onnx_runtime_equals_pytorch_on_real_clips",),
        "the ONNX graph takes only the export example's batch size"),
    Bug("onnx-check-never-fails", "vmae2_fast/stages/onnx_export.py",
        edit("if worst > cfg.tolerance * max(1.0, scale):", "if False:"),
        ("tests/test_onnx_export.py::test_onnx_misuse_is_an_error",),
        "onnx_export accepts a file that differs from PyTorch"),
    Bug("bench-records-unflushed", "bench/records.py",
        edit("        self._file.flush()\n", ""),
        ("tests/test_bench_render.py::test_records_are_on_disk_as_each_is_added",
         "tests/test_bench_throughput.py::test_a_killed_run_leaves_the_records_it_measured"),
        "a benchmark's records wait in a buffer: a killed run loses what it measured"),
    Bug("bench-restatement-called-official", "bench/implementations.py",
        edit('restatement = Impl("re-statement", "re-statement",', 'restatement = Impl("official", "re-statement",'),
        ("tests/test_bench_throughput.py::test_throughput_bench_smoke",),
        "the re-statement of the official computation is reported as the official code"),
    Bug("bench-ratio-across-batches", "bench/render.py",
        edit(' and b["batch"] == r["batch"]\n', "\n"),
        ("tests/test_bench_throughput.py::test_sweep_stops_an_implementation_at_its_first_out_of_memory",),
        "a sweep's rows are compared with the baseline at another batch"),
    # issue 20: the defects a user hit, and tests that could not fail
    Bug("preview-from-the-first-line", "vmae2_fast/stages/pretrain.py",
        edit("        order = range(n) if self.found is None else [self.found, *range(n)]\n",
             "        order = [0]\n"),
        ("tests/test_records.py::test_a_list_whose_first_video_is_missing_ends_with_a_preview_of_a_readable_one",),
        "the reconstruction preview reads only the list's first line: a run whose first video is "
        "missing ends without its preview"),
    Bug("workers-not-capped", "vmae2_fast/data/loaders.py",
        edit("    if requested <= cores:\n", "    if True:\n"),
        ("tests/test_cpu_run.py::test_workers_are_capped_at_the_cores_the_process_may_use",),
        "--num-workers 8 on a 2-core machine starts 8 DataLoader workers"),
    Bug("estimate-ignores-the-views", "vmae2_fast/stages/estimate.py",
        edit("    clips = cfg.batch_size * cfg.num_sample * cfg.accum_steps\n",
             "    clips = cfg.batch_size * cfg.accum_steps\n"),
        ("tests/test_cpu_run.py::test_a_cpu_run_logs_the_estimate_before_its_first_step",),
        "the CPU time estimate counts videos, not the num_sample views the model runs on"),
    Bug("dali-output-let-go-before-its-copy", "vmae2_fast/data/dali/transfer.py",
        edit("    held.add((out, t), stream)\n", "    held.add((), stream)\n"),
        ("tests/test_dali_device_copy.py::test_every_output_is_alive_when_its_queued_copy_runs",),
        "a GPU decode's DALI output is dropped while the copy out of it is only queued"),
    Bug("dali-output-let-go-before-the-wait", "vmae2_fast/data/dali/transfer.py",
        edit("            self.held[0][1].synchronize()      # wait, THEN let go (not the other way round)\n"
             "            self.held.popleft()\n",
             "            self.held.popleft()[1].synchronize()\n"),
        ("tests/test_dali_device_copy.py::test_every_output_is_alive_when_its_queued_copy_runs",),
        "past the limit, the oldest held output is let go before its copy is waited for"),
    Bug("nonfinite-skip-needs-a-fused-optimiser", "vmae2_fast/train/loop.py",
        edit("            elif finite.item():\n", "            else:\n"),
        ("tests/test_nonfinite_skip.py::test_a_nonfinite_update_is_skipped_whatever_the_optimiser[hand-written-sgd]",),
        "an optimiser that does not read found_inf applies the NaN update"),
    Bug("nonfinite-skip-decided-per-process", "vmae2_fast/train/loop.py",
        edit("                finite = all_reduce_sum((~finite).float(), self.dist) == 0\n", "                pass\n"),
        ("tests/test_nonfinite_skip.py::test_ddp_and_fsdp_processes_skip_together",),
        "each process decides alone: one rank's infinite loss with finite gradients makes the replicas differ"),
    Bug("clip-before-unscale", "vmae2_fast/train/loop.py",
        (("        if self.scaler:\n            self.scaler.unscale_(self.optimizer)\n        grads = ",
          "        grads = "),
         ("        gnorm = full_tensor(gnorm)             # FSDP: the norm of the sharded gradients, completed\n",
          "        gnorm = full_tensor(gnorm)\n        if self.scaler:\n            self.scaler.unscale_(self.optimizer)\n")),
        ("tests/test_clipping.py::test_clipping_is_the_official_formula_in_the_official_order[loss-scaler-0.05]",),
        "the gradients are clipped while still multiplied by the loss scale (the official order unscales first)"),
    Bug("clip-per-parameter", "vmae2_fast/train/loop.py",
        edit("            gnorm = torch.nn.utils.clip_grad_norm_(self.params, s.clip_grad, foreach=True)",
             "            gnorm = torch.stack([torch.nn.utils.clip_grad_norm_(p, s.clip_grad) for p in self.params]).norm()"),
        ("tests/test_clipping.py::test_clipping_is_the_official_formula_in_the_official_order[fp32-0.05]",),
        "each parameter clipped to the bound on its own, not all by one norm"),
    Bug("imagenet-std-swapped", "vmae2_fast/constants.py",
        edit("IMAGENET_STD = (0.229, 0.224, 0.225)", "IMAGENET_STD = (0.229, 0.225, 0.224)"),
        ("tests/test_pixels.py::test_normalisation_is_imagenet_in_the_requested_dtype",),
        "the green and blue standard deviations swapped (the pixel tests took the truth from the same constant)"),
    Bug("fsdp-bf16-master-weights", "vmae2_fast/train/parallelize.py",
        edit("    blocks = _blocks(model)\n    for blk in blocks:\n        fully_shard(",
             "    if param_dtype == \"bf16\":\n        model.to(torch.bfloat16)\n    blocks = _blocks(model)\n"
             "    for blk in blocks:\n        fully_shard("),
        ("tests/test_fsdp.py::test_fsdp_bf16_parameters_train_like_fp32",),
        "--fsdp-param-dtype bf16 keeps the sharded master weights in bf16: small updates round away"),
    Bug("activation-checkpointing-ignored", "vmae2_fast/models/vit.py",
        edit("    k = checkpoint_interval(activation_checkpointing) if torch.is_grad_enabled() else 0\n",
             "    k = 0\n"),
        ("tests/test_activation_checkpointing.py::test_every_kth_block_is_recomputed_and_nothing_changes",),
        "--activation-checkpointing does nothing (the gradients are the same, so only a recompute count sees it)"),
    Bug("init-ignored", "vmae2_fast/stages/classify.py",
        edit("        if cfg.init:\n            load_classifier_weights(", "        if cfg.init and False:\n            load_classifier_weights("),
        ("tests/test_classify_stages.py::test_post_pretrain_then_finetune_then_evaluate",),
        "--init is parsed but its weights are never loaded: fine-tuning starts from scratch"),
    Bug("bench-official-decoder-ratio", "bench/official_code.py",
        edit("gen.RunningCellMaskingGenerator(tuple(grid), decoder_mask_ratio)",
             "gen.RunningCellMaskingGenerator(tuple(grid), mask_ratio)"),
        ("tests/test_official_code.py::test_the_real_official_code_computes_our_loss_and_every_gradient",),
        "the bench's official masks draw the decoder's running cell at the encoder's ratio (the stand-in "
        "checkout ignores the ratio; needs a real checkout to be caught)",
        official_checkout=True),
    Bug("fixtures-without-target-normalisation", "scripts/make_fixtures.py",
        edit('code.forward_loss(model, (video, enc, dec), torch.device("cpu"), c["patch_size"])',
             'code.forward_loss(model, (video, enc, dec), torch.device("cpu"), c["patch_size"], normalize_target=False)'),
        ("tests/test_fixtures.py::test_the_committed_fixtures_are_what_the_official_checkout_computes",),
        "the fixture script computes another loss than the one the committed fixtures hold (needs a checkout)",
        official_checkout=True),
    Bug("breakdown-optimiser-per-parameter", "bench/step_breakdown.py",
        edit('    parts.add("optimiser", opt.step, setup=give_grads)',
             '    parts.add("optimiser", opt.step, len(list(model.parameters())), setup=give_grads)'),
        ("tests/test_bench_step_breakdown.py::test_step_breakdown_smoke",),
        "the step breakdown counts one optimiser step per parameter tensor: the parts outgrow the step"),
    Bug("throughput-rate-from-the-best-step", "bench/throughput.py",
        edit("    clips = a.batch / med\n", "    clips = a.batch / min(times)\n"),
        ("tests/test_bench_throughput.py::test_throughput_bench_smoke",),
        "clips/s reported from the fastest step while the table says median"),
    Bug("masks-made-on-the-cpu", "vmae2_fast/masking.py",
        edit("        noise = torch.rand(batch, self.grid[1] * self.grid[2], device=self.device, generator=generator)",
             "        noise = torch.rand(batch, self.grid[1] * self.grid[2], generator=generator)"),
        ("tests/test_masking.py::test_masks_are_made_on_the_requested_device",),
        "the tube masks' noise is drawn on the CPU whatever the device (a copy and a sync on a GPU)"),
    Bug("dali-roi-transposed", "vmae2_fast/data/dali/pipeline.py",
        edit('pipe.feed_input(f"roi_start{k}", [np.array([s.boxes[k][1], s.boxes[k][0]], np.float32)',
             'pipe.feed_input(f"roi_start{k}", [np.array([s.boxes[k][0], s.boxes[k][1]], np.float32)'),
        ("tests/test_dali_pipeline.py::test_output_equals_cpu_path",),
        "DALI's crop starts at (x, y) read as (row, column): a transposed region"),
    Bug("suite-caps-over-budget", "bench/gpu_suite.py",
        edit('**{"fused-ops": 20}, decoding=25)', '**{"fused-ops": 20}, decoding=125)'),
        ("tests/test_gpu_suite.py::test_the_cuda_plan_fits_its_budget_and_the_device_call",),
        "the GPU plan's caps outgrow its budget: the last steps get what is left"),
    Bug("suite-flag-a-script-does-not-take", "bench/gpu_suite.py",
        edit('"none", "full", "--tag", f"{prefix}compiled"', '"none", "full", "--tags", f"{prefix}compiled"'),
        ("tests/test_gpu_suite.py::test_every_command_of_the_plan_is_accepted_by_its_script",),
        "a step's command has a flag its script refuses: the step fails minutes into a device call"),
    Bug("suite-kill-leaves-children", "bench/gpu_suite.py",
        edit("                _kill_group(proc)\n                log.write(", "                proc.kill()\n                proc.wait()\n                log.write("),
        ("tests/test_gpu_suite.py::test_a_command_past_its_limit_is_stopped_with_what_it_started",),
        "a step stopped at its cap leaves the processes it started running on the GPU"),
    Bug("suite-killed-cache-reused", "bench/gpu_suite.py",
        edit('note += "; " + caches.discard(f"{s.name} was stopped")', "caches.done()"),
        ("tests/test_gpu_suite.py::test_a_step_out_of_time_keeps_its_records_and_is_marked_timed_out",),
        "the cache a killed step was writing (a lock file, a cut-short entry) reaches later steps"),
    Bug("fused-ops-stops-at-a-failure", "bench/fused_ops.py",
        edit("except Exception as exc:    # noqa: BLE001 - recorded; the next measurement runs",
             "except ZeroDivisionError as exc:"),
        ("tests/test_bench_fused_ops.py::test_a_failed_measurement_is_recorded_and_the_run_goes_on",),
        "the kernel benchmark stops at its first failed measurement"),
    Bug("pytest-records-at-the-end", "bench/gpu_tests.py",
        (("        self.phases: dict[str, list] = {}\n", "        self.phases: dict[str, list] = {}\n        self.done = []\n"),
         ("            self.records.add(self._row(report.nodeid, self.phases.pop(report.nodeid)))",
          "            self.done.append(self._row(report.nodeid, self.phases.pop(report.nodeid)))\n\n"
          "    def pytest_sessionfinish(self):\n        for row in self.done:\n            self.records.add(row)")),
        ("tests/test_bench_gpu_tests.py::test_rows_as_tests_complete_pyav_skips_and_other_collection_errors_stay",),
        "a test run's outcomes are written only when pytest ends: a run stopped at its cap keeps none"),
    Bug("drop-path-rate-guarded", "vmae2_fast/models/vit.py",
        edit('        self.register_buffer("p", torch.tensor(self.rate), persistent=False)',
             "        self.p = self.rate"),
        ("tests/test_compile.py::test_one_process_compiles_one_graph_per_block_kind",),
        "the drop-path rate is a float: Dynamo guards on it, each block of rising rates recompiles "
        "and past recompile_limit the rest run uncompiled"),
    Bug("drop-path-off-in-a-stacks-first-block", "vmae2_fast/models/vit.py",
        edit("drop_path_on=drop_path_rate > 0, ", ""),
        ("tests/test_compile.py::test_one_process_compiles_one_graph_per_block_kind",),
        "the first block of a stack with drop path (rate 0) skips it: a graph of its own"),
    Bug("shard-resume-asks-the-wrong-worker", "vmae2_fast/data/shard_loader.py",
        edit("worker = (loader_worker + self.skip) % workers", "worker = loader_worker"),
        ("tests/test_shards.py::test_resume_mid_epoch_gives_the_remaining_batches_in_order[2]",),
        "a shard run resumed mid-epoch with DataLoader workers gets its batches out of order"),
    Bug("shard-workers-read-the-same-stretch", "vmae2_fast/data/shard_loader.py",
        edit("first = rank * steps * batch + sum(counts[:worker]) * batch", "first = rank * steps * batch"),
        ("tests/test_shards.py::test_an_epoch_reads_every_sample_once_across_ranks_and_workers[1-2]",),
        "every DataLoader worker streams the same samples: an epoch repeats some and never sees others"),
    Bug("shard-samples-in-stored-order", "vmae2_fast/data/shard_loader.py",
        edit("perm = np.random.default_rng([seed, epoch, 0x5A4D, s]).permutation(len(shard))",
             "perm = np.arange(len(shard))"),
        ("tests/test_shards.py::test_the_order_is_a_function_of_seed_and_epoch",),
        "only the shards are shuffled: a shard's videos come in the same order every epoch"),
    Bug("shard-offsets-point-at-headers", "vmae2_fast/data/tools/shards.py",
        edit("return self.tar.offset - padded           # where", "return self.tar.offset - padded - 512  # where"),
        ("tests/test_shards.py::test_the_tars_are_webdataset_shards_holding_the_listed_files",),
        "the manifest's byte ranges start at the tar header, not at the video"),
    Bug("shard-reads-not-retried", "vmae2_fast/data/shard_store.py",
        edit("    tries: int = 6\n", "    tries: int = 1\n"),
        ("tests/test_shards_s3.py::test_a_store_lost_for_seconds_mid_epoch_is_retried",),
        "a read of a store that is down for a second fails the run at once"),
    Bug("shard-bad-record-not-replaced", "vmae2_fast/data/shard_loader.py",
        edit("                current = int(run[rng.integers(len(run))])", "                pass"),
        ("tests/test_shards.py::test_a_bad_record_is_replaced_and_written_to_skipped_jsonl",),
        "an undecodable record is tried again instead of replaced, and the batch is lost"),
    Bug("dali-shards-read-the-files-order", "vmae2_fast/data/dali/pipeline.py",
        edit("        if self.shard_feed is not None:\n            yield from", "        if False:\n            yield from"),
        ("tests/test_shards_dali.py::test_training_batches_are_the_files_in_the_streaming_order[pretrain]",),
        "DALI on a shard set reads in the file sampler's order: each batch fetches from every shard"),
]


def git_clean(path: Path) -> bool:
    return subprocess.run(["git", "diff", "--quiet", "HEAD", "--", str(path)], cwd=ROOT).returncode == 0


def plant_and_test(bug: Bug) -> tuple[bool, float, str]:
    path = ROOT / bug.file
    original = path.read_bytes()
    text = original.decode()
    for old, new in bug.edits:
        if text.count(old) != 1:
            raise SystemExit(f"{bug.name}: {old!r} occurs {text.count(old)} times in {bug.file}; "
                             "update this bug to the current code")
        text = text.replace(old, new)
    t0 = time.time()
    try:
        path.write_text(text)
        res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                              *(("-m", "official_checkout") if bug.official_checkout else ()),
                              *bug.tests], cwd=ROOT, capture_output=True, text=True)
    finally:
        path.write_bytes(original)
    failed = [ln for ln in res.stdout.splitlines() if ln.startswith(("FAILED", "ERROR"))]
    if failed:
        detail = failed[0]
    elif res.returncode < 0:
        detail = f"pytest crashed (signal {-res.returncode})"
    else:
        detail = f"pytest exit code {res.returncode}"
    # exit code 5: no test ran (a node id that no longer exists, or one a marker deselected)
    return res.returncode not in (0, 5), time.time() - t0, detail


def official_checkout_present() -> bool:
    """The tests/needs.py rule: $VMAE2_FAST_OFFICIAL_REPO or .official/VideoMAEv2."""
    repo = Path(os.environ.get("VMAE2_FAST_OFFICIAL_REPO") or ROOT / ".official" / "VideoMAEv2")
    return (repo / "engine_for_pretraining.py").is_file()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", help="bugs to plant (default: all)")
    p.add_argument("--list", action="store_true", help="list the bugs and exit")
    a = p.parse_args()
    if a.list:
        for b in BUGS:
            print(f"{b.name:34s} {b.file}: {b.what}")
        return 0
    known = {b.name: b for b in BUGS}
    unknown = [n for n in a.names if n not in known]
    if unknown:
        print(f"error: unknown bug(s) {unknown}; see --list", file=sys.stderr)
        return 2
    chosen = [known[n] for n in a.names] or BUGS
    dirty = sorted({b.file for b in chosen if not git_clean(ROOT / b.file)})
    if dirty:
        print(f"error: uncommitted changes in {dirty}: commit or stash them first", file=sys.stderr)
        return 2
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    missed, not_run = [], []
    checkout = official_checkout_present()
    print("| planted bug | file | caught by | s |\n|---|---|---|---|")
    for bug in chosen:
        if bug.official_checkout and not checkout:
            print(f"| {bug.name}: {bug.what} | {bug.file} | not run: no official checkout "
                  "(.official/VideoMAEv2 or $VMAE2_FAST_OFFICIAL_REPO) | 0 |", flush=True)
            not_run.append(bug.name)
            continue
        caught, secs, detail = plant_and_test(bug)
        print(f"| {bug.name}: {bug.what} | {bug.file} | "
              f"{detail if caught else 'NOT CAUGHT by ' + ' '.join(bug.tests)} | {secs:.0f} |", flush=True)
        if not caught:
            missed.append(bug.name)
    if not_run:
        print(f"\n{len(not_run)} planted bug(s) not run for want of an official checkout: {', '.join(not_run)} "
              "(`git clone https://github.com/OpenGVLab/VideoMAEv2 .official/VideoMAEv2` to run them)")
    if missed:
        print(f"\n{len(missed)} planted bug(s) not caught: {', '.join(missed)}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
