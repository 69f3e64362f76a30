"""A few-minute stage-1 run on a 2-core CPU with the embedded synthetic dataset.

Small clips (8 frames of 64x64, a 4x4x4 token grid) and a short schedule; the masking, loss,
optimiser and schedule are the paper's, only the sizes shrink. The base lr is raised because the
total batch is tiny (lr is per 256 videos). Two CPU threads (`threads`): a run gives the same
numbers every time on the same machine (a reduction's result depends on how many threads split it).
"""


def overrides(model: str) -> dict:
    return dict(input_size=64, num_frames=8, tubelet_size=2, decoder_depth=4, mask_ratio=0.9,
                decoder_mask_ratio=0.5, sampling_rate=2, num_sample=2, batch_size=8, epochs=3,
                warmup_epochs=1, lr=2e-2, min_lr=1e-4, warmup_lr=1e-4, weight_decay=0.05,
                betas=(0.9, 0.95), clip_grad=None, activation_checkpointing=False, num_workers=2,
                precision="fp32", save_every=4, log_every=5, preview_every=4, threads=2)
