"""Registries: names, loud conflicts, and plugins from other pip packages via entry points."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import nni_visplugin
from nni_visplugin.utils.registry import Registry


def test_builtin_names():
    assert {"darts_cell", "seed_cells"} <= set(nni_visplugin.list_spaces())
    assert "darts" in nni_visplugin.list_strategies()


def test_unknown_name_lists_known_ones():
    with pytest.raises(KeyError, match="darts_cell"):
        nni_visplugin.create_space("nope")


def test_unknown_kwargs_are_rejected_by_name():
    with pytest.raises(TypeError, match="widht"):
        nni_visplugin.create_space("seed_cells", widht=3)


def test_duplicate_registration_is_an_error():
    def one():
        return 1

    def two():
        return 2

    reg = Registry("space", "nni_visplugin.test_group_unused", "nni_visplugin.spaces")
    reg.register("a", one)
    reg.register("a", one)  # the same factory again (a module imported twice) is harmless
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", two)
    reg.register("a", two, override=True)
    assert reg.create("a") == 2


def _install_plugin(tmp_path, name: str, group: str, target: str):
    pkg = tmp_path / "site"
    (pkg / "myplugin").mkdir(parents=True)
    (pkg / "myplugin" / "__init__.py").write_text(textwrap.dedent("""
        def tiny_space(in_channels=3, image_size=32, num_classes=10):
            return ("tiny", in_channels, image_size, num_classes)
    """))
    dist = pkg / "myplugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: myplugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{group}]\n{name} = {target}\n")
    return pkg


def test_other_packages_extend_the_registry_through_entry_points(tmp_path):
    site = _install_plugin(tmp_path, "tiny", "nni_visplugin.spaces", "myplugin:tiny_space")
    code = ("import nni_visplugin; assert 'tiny' in nni_visplugin.list_spaces();"
            "print(nni_visplugin.create_space('tiny', num_classes=4))")
    out = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(site), "PATH": ""},
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "('tiny', 3, 32, 4)" in out.stdout


def test_entry_point_clashing_with_a_builtin_warns_and_keeps_the_builtin(tmp_path):
    site = _install_plugin(tmp_path, "darts_cell", "nni_visplugin.spaces", "myplugin:tiny_space")
    code = ("import warnings, nni_visplugin\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    names = nni_visplugin.list_spaces()\n"
            "assert any('already taken' in str(x.message) for x in w), [str(x.message) for x in w]\n"
            "print(type(nni_visplugin.create_space('darts_cell', width=4, num_cells=1)).__name__)")
    out = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(site), "PATH": ""},
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "DartsCellSpace" in out.stdout


@pytest.mark.parametrize("name", ["../evil", "a/b", ".hidden", "", "x" * 80])
def test_names_that_could_escape_a_directory_are_refused(name):
    reg = Registry("space", "nni_visplugin.test_group_unused", "nni_visplugin.spaces")
    with pytest.raises(ValueError, match="must match"):
        reg.register(name, lambda: 1)


def test_every_public_name_resolves():
    import nni_visplugin

    for name in nni_visplugin.__all__:
        assert getattr(nni_visplugin, name) is not None, name
    with pytest.raises(AttributeError):
        nni_visplugin.no_such_name  # noqa: B018
