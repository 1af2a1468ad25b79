"""What the CPU at hand can do: its model name and the instruction-set flags that decide speed.

Benchmarks print this beside every figure (the development machines change between an Intel
Xeon without bfloat16 instructions and an AMD EPYC Zen 4 with ``avx512_bf16``, and the same
lever measures differently on each). Imports nothing from the package.
"""

from __future__ import annotations

import platform

# Flags that decide whether half precision and int8 can pay on a CPU.
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "avx512_vnni")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_description(cpuinfo: str = "/proc/cpuinfo") -> dict:
    """``{"model": name, "flags": [the SPEED_FLAGS present]}`` (Linux; "unknown" elsewhere)."""
    model, flags = platform.processor() or "unknown", set()
    try:
        with open(cpuinfo) as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
    except OSError:
        pass
    return {"model": model, "flags": [f for f in SPEED_FLAGS if f in flags]}


def cpu_has_bf16(description: dict | None = None) -> bool:
    """Whether the CPU computes bfloat16 in hardware (``avx512_bf16`` or AMX)."""
    description = description or cpu_description()
    return any(flag in description["flags"] for flag in BF16_FLAGS)


def gpu_visible(backend: str | None = None) -> bool:
    """Whether the Keras backend (default: the current one) computes on a GPU here. Imports the
    backend's own library only (never TensorFlow for JAX or PyTorch)."""
    if backend is None:
        import keras

        backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.devices()[0].platform == "gpu"
    if backend == "torch":
        import torch

        return bool(torch.cuda.is_available())
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def device_description(backend: str) -> dict:
    """``{"name": the device a Keras backend computes on, "version": the backend's version}``.

    The GPU's model where the backend sees one (``"NVIDIA H200"``), else ``"CPU: <model>"``.
    Imports the backend's own library (never TensorFlow for JAX or PyTorch).
    """
    name = None
    if backend == "jax":
        import jax

        version = jax.__version__
        device = jax.devices()[0]
        if device.platform != "cpu":
            name = f"{device.platform.upper()}: {device.device_kind} (x{jax.device_count()})"
    elif backend == "torch":
        import torch

        version = torch.__version__
        if torch.cuda.is_available():
            name = f"GPU: {torch.cuda.get_device_name(0)} (x{torch.cuda.device_count()})"
    else:
        import tensorflow as tf

        version = tf.__version__
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            details = tf.config.experimental.get_device_details(gpus[0])
            name = f"GPU: {details.get('device_name', gpus[0].name)} (x{len(gpus)})"
    return {"name": name or f"CPU: {cpu_description()['model']}", "version": version}
