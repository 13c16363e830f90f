"""The README's `kernels` section runs, and the benchmarks section holds the generated table markers."""

from readme import python_blocks, section


def test_readme_kernels_example():
    code = python_blocks("kernels")
    assert code
    ns: dict = {}
    exec(compile(code[0], "README-kernels", "exec"), ns)
    assert ns["y"].shape == (2, 1000, 64) and ns["h"].shape == (2, 64, 16)
    assert ns["hist"].shape == (2, 3, 64)
    assert ns["states"][0, -1, 0] > 990  # 1 + 0.999 + 0.999**2 + ... -> 1000


def test_readme_benchmarks_has_generated_table_markers():
    from nbssm.bench import README_BEGIN, README_END

    sec = section("benchmarks")
    assert README_BEGIN in sec and README_END in sec
