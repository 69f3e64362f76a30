"""The GPU data path: NVIDIA DALI decodes (NVDEC, or its CPU decoder for VP8/VP9/MJPEG) and
transforms on the device, driven by our host-side sampling."""
