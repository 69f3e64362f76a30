"""The DALI graph of the loader: encoded video (or a frame folder's encoded images) in, K
cropped, resized, mirrored views out as uint8 ``(C, T, S, S)``, stacked to ``(K, C, T, S, S)``
when K > 1 (normalised later, on the device, by the stage). Every random choice (frames, boxes,
mirror) is made on the host and fed in, so the graph is a pure function of its inputs; only
DALI's own RandAugment draws inside it.
"""
from __future__ import annotations


def build_pipeline(batch_size, device, device_id, num_threads, size, views, rand_aug, seed,
                   images: int = 0):
    """The graph; ``images`` > 0: each sample is that many encoded frame files (a frame folder's
    clip), decoded by the image decoder and stacked, instead of one encoded video."""
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id,
                  seed=seed, exec_dynamic=True, enable_conditionals=rand_aug is not None,
                  prefetch_queue_depth=1)
    def pipe():
        dev = "mixed" if device == "gpu" else "cpu"
        if images:
            frames = [fn.decoders.image(fn.external_source(name=f"img{j}", dtype=types.UINT8, ndim=1,
                                                           no_copy=True), device=dev, output_type=types.RGB)
                      for j in range(images)]
            video = fn.stack(*frames, axis=0, axis_name="F")
        else:
            enc = fn.external_source(name="enc", dtype=types.UINT8, ndim=1, no_copy=True)
            idx = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
            video = fn.decoders.video(enc, device=dev, frames=idx, pad_mode="none")
        outs = []
        for k in range(views):
            v = video
            if rand_aug is not None:
                from nvidia.dali.auto_aug import rand_augment
                v = rand_augment.rand_augment(v, n=rand_aug[0], m=rand_aug[1],
                                              num_magnitude_bins=11, fill_value=128)
            lo = fn.external_source(name=f"roi_start{k}", dtype=types.FLOAT, ndim=1)
            hi = fn.external_source(name=f"roi_end{k}", dtype=types.FLOAT, ndim=1)
            mirror = fn.external_source(name=f"mirror{k}", dtype=types.INT32, ndim=0)
            v = fn.resize(v, size=[size, size], roi_start=lo, roi_end=hi, roi_relative=False,
                          interp_type=types.INTERP_LINEAR, antialias=True)
            # uint8 out: layout and mirror only; normalised on the device by the stage
            outs.append(fn.crop_mirror_normalize(v, dtype=types.UINT8, output_layout="CFHW",
                                                 mirror=mirror))
        return fn.stack(*outs, axis=0) if views > 1 else outs[0]
    import warnings
    with warnings.catch_warnings():   # DALI's own RandAugment uses its deprecated aliases
        warnings.simplefilter("ignore", DeprecationWarning)
        p = pipe()
        p.build()
    return p
