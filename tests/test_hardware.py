"""CPU description for benchmarks and defaults."""

from keras_preact.hardware import cpu_description, cpu_has_bf16


def test_cpu_description_reads_model_and_speed_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu sse avx512f avx512_bf16 avx512_vnni\n")
    description = cpu_description(str(info))
    assert description == {"model": "AMD EPYC 9R14", "flags": ["avx512f", "avx512_bf16", "avx512_vnni"]}
    assert cpu_has_bf16(description)
    assert not cpu_has_bf16({"model": "Xeon", "flags": ["avx512f"]})
    assert cpu_description(str(tmp_path / "missing"))["flags"] == []
