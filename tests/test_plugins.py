"""Plugin discovery, loading and validation (``divergefork._plugins``), in process.

Discovery goes through real entry points: each test writes a throwaway distribution (a
module plus a ``*.dist-info``) into a temporary directory on ``sys.path``. Nothing here forks:
collection only builds ``ChildSpec`` objects, which is the point of "nothing is forked".
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import textwrap
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import NoReturn

import pytest
from plugin_fixtures.distributions import make_distribution, marker_plugin, unique

import divergefork as df
from divergefork._plugins import AUTOLOAD_ENV, Plugins, load_plugins

GOOD = """
    from __future__ import annotations
    import argparse
    from typing import NoReturn
    import divergefork as df

    def entry(value: int) -> NoReturn:
        df.exit_child(value)

    @df.hookimpl
    def divergefork_addoption(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--good-code", type=int, default=0)

    @df.hookimpl
    def divergefork_children(config: df.Config) -> list[df.ChildSpec[int]]:
        return [df.ChildSpec("good-a", config.options.good_code, entry), df.ChildSpec("good-b", 1, entry)]
"""


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on ``sys.path`` that test distributions are written into."""
    directory = tmp_path / "site"
    directory.mkdir()
    monkeypatch.syspath_prepend(str(directory))
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    yield directory


def entry_points_of(dist: str) -> list[metadata.EntryPoint]:
    """The real entry points of one test distribution, found by importlib.metadata."""
    return [
        ep
        for ep in metadata.entry_points(group="divergefork")
        if ep.dist is not None and ep.dist.name == dist
    ]


def install(site: Path, dist: str, source: str, ep_name: str | None = None) -> tuple[str, str]:
    """A distribution ``dist`` holding one plugin module; returns (entry-point name, module)."""
    module = unique(dist.replace("-", "_"))
    name = ep_name or dist.removeprefix("dfx-")
    make_distribution(site, dist, {module: source}, {name: module})
    return name, module


def load_dist(dist: str, *specs: str) -> Plugins:
    return load_plugins(specs, entry_points=entry_points_of(dist))


def config_for(plugins: Plugins, *argv: str) -> df.Config:
    parser = argparse.ArgumentParser()
    plugins.add_options(parser)
    return df.Config(parser.parse_args(list(argv)), plugins.pm)


# -- discovery -------------------------------------------------------------------------------


def test_an_installed_entry_point_is_discovered_with_its_distribution(site: Path) -> None:
    name, module = install(site, "dfx-good", GOOD)
    plugins = load_plugins()  # the default: every installed entry point in group divergefork
    (plugin,) = [p for p in plugins.plugins if p.name == name]
    assert plugin.module == module
    assert plugin.distribution == "dfx-good 0.1.0"
    assert plugin.label == "'good' (distribution dfx-good 0.1.0)"
    assert plugin.obj is sys.modules[module]


def test_children_are_collected_with_their_plugin_and_options(site: Path) -> None:
    install(site, "dfx-good", GOOD)
    plugins = load_dist("dfx-good")
    collected = plugins.collect(config_for(plugins, "--good-code", "42"))
    assert [(c.plugin.name, c.spec.name, c.spec.value) for c in collected] == [
        ("good", "good-a", 42),
        ("good", "good-b", 1),
    ]


def test_autoload_can_be_switched_off_by_environment(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name, _ = install(site, "dfx-good", GOOD)
    monkeypatch.setenv(AUTOLOAD_ENV, "1")
    assert [p.name for p in load_plugins(entry_points=entry_points_of("dfx-good")).plugins] == []


def test_dash_p_loads_a_module_and_is_a_no_op_for_one_already_loaded(site: Path) -> None:
    name, module = install(site, "dfx-good", GOOD)
    plugins = load_dist("dfx-good", module)
    assert [(p.name, p.distribution) for p in plugins.plugins] == [(name, "dfx-good 0.1.0")]
    other = unique("dfx_p")
    (site / f"{other}.py").write_text(textwrap.dedent(GOOD).replace("good-", "other-").replace("good-code", "x"))
    plugins = load_plugins([other], autoload=False)
    assert [(p.name, p.distribution, p.label) for p in plugins.plugins] == [(other, None, f"'{other}' (-p {other})")]


@pytest.mark.parametrize("by", ["entry point name", "module name"])
def test_dash_p_no_blocks_a_plugin(site: Path, by: str) -> None:
    name, module = install(site, "dfx-good", GOOD)
    blocked = name if by == "entry point name" else module
    plugins = load_dist("dfx-good", f"no:{blocked}")
    assert plugins.plugins == []
    assert plugins.blocked == [blocked]
    assert module not in sys.modules  # a blocked plugin is not even imported


def test_a_blocked_module_is_not_loaded_by_dash_p_either(site: Path) -> None:
    _, module = install(site, "dfx-good", GOOD)
    assert load_plugins([module, f"no:{module}"], autoload=False).plugins == []


# -- broken plugins ----------------------------------------------------------------------------


def test_an_import_error_names_entry_point_distribution_and_what_to_do(site: Path) -> None:
    install(site, "dfx-broken", "import dfx_no_such_dependency\n")
    with pytest.raises(df.PluginError) as info:
        load_dist("dfx-broken")
    error = info.value
    assert error.plugin == "'broken' (distribution dfx-broken 0.1.0)"
    text = str(error)
    assert text.startswith("plugin 'broken' (distribution dfx-broken 0.1.0): cannot import ")
    assert "ModuleNotFoundError: No module named 'dfx_no_such_dependency'" in text
    assert "-p no:broken" in text
    assert "Traceback" not in text
    assert isinstance(error.__cause__, ModuleNotFoundError)


def test_a_syntax_error_points_at_the_bad_line(site: Path) -> None:
    _, module = install(site, "dfx-syntax", "x = 1\ndef broken(:\n")
    with pytest.raises(df.PluginError, match=rf"SyntaxError: .* \(at .*{module}\.py:2\)"):
        load_dist("dfx-syntax")


def test_a_missing_dash_p_module_says_where_to_look() -> None:
    with pytest.raises(df.PluginError, match=r"cannot import dfx_nowhere_.*is it installed, or on PYTHONPATH") as info:
        load_plugins([unique("dfx_nowhere")], autoload=False)
    # The whole traceback is importlib's: no location that points into the standard library.
    assert "(at " not in str(info.value) and "importlib" not in str(info.value)


def test_a_missing_dependency_points_at_the_plugins_import_line(site: Path) -> None:
    _, module = install(site, "dfx-needy", "import os\nimport dfx_no_such_dependency\n")
    with pytest.raises(df.PluginError, match=rf"No module named 'dfx_no_such_dependency' \(at .*{module}\.py:2, in <module>\)"):
        load_dist("dfx-needy")


def test_tryfirst_and_trylast_order_plugins_across_plugins(site: Path) -> None:
    seen: list[str] = []
    sys.modules["dfx_order_log"] = type(sys)("dfx_order_log")
    setattr(sys.modules["dfx_order_log"], "seen", seen)
    source = """
        import divergefork as df
        import dfx_order_log

        @df.hookimpl({mark})
        def divergefork_finished(reports):
            dfx_order_log.seen.append({name!r})
    """
    make_distribution(
        site,
        "dfx-order",
        {
            (a := unique("dfx_order_a")): source.format(mark="trylast=True", name="a-last"),
            (b := unique("dfx_order_b")): source.format(mark="", name="b"),
            (c := unique("dfx_order_c")): source.format(mark="tryfirst=True", name="c-first"),
        },
        {"a": a, "b": b, "c": c},
    )
    try:
        assert load_dist("dfx-order").finished([]) == []
    finally:
        del sys.modules["dfx_order_log"]
    assert seen == ["c-first", "b", "a-last"]


def test_observer_hooks_return_errors_and_call_every_other_plugin(site: Path) -> None:
    make_distribution(
        site,
        "dfx-observers",
        {
            (bad := unique("dfx_bad")): """
                import divergefork as df

                @df.hookimpl
                def divergefork_report(report):
                    raise ValueError("bad observer")
            """,
            (good := unique("dfx_good")): """
                import divergefork as df
                seen = []

                @df.hookimpl
                def divergefork_report(report):
                    seen.append(report.name)
            """,
        },
        {"bad": bad, "good": good},
    )
    plugins = load_dist("dfx-observers")
    report = df.Report(name="x", pid=1, outcome=df.Outcome.EXITED, exit_code=0)
    (error,) = plugins.report(report)
    assert error.plugin == "'bad' (distribution dfx-observers 0.1.0)" and "ValueError: bad observer" in str(error)
    owner = plugins.owner_of(error)
    assert owner is not None and owner.name == "bad"
    assert plugins.report(report, skip={"bad"}) == []
    good_plugin = next(p for p in plugins.plugins if p.name == "good")
    assert getattr(good_plugin.obj, "seen") == ["x", "x"]


def test_a_hookimpl_with_a_wrong_parameter_shows_both_signatures(site: Path) -> None:
    install(
        site,
        "dfx-badsig",
        """
        import divergefork as df

        @df.hookimpl
        def divergefork_children(cfg):
            return []
        """,
    )
    with pytest.raises(df.PluginError) as info:
        load_dist("dfx-badsig")
    text = str(info.value)
    assert info.value.plugin == "'badsig' (distribution dfx-badsig 0.1.0)"
    assert "divergefork_children(cfg)" in text
    assert "specification divergefork_children(config: df.Config) -> Iterable[df.ChildSpec[Any]]" in text
    assert "cfg" in text


def test_a_misspelled_hook_is_caught_with_a_suggestion(site: Path) -> None:
    install(
        site,
        "dfx-typo",
        """
        import divergefork as df

        @df.hookimpl
        def divergefork_childern(config):
            return []
        """,
    )
    with pytest.raises(df.PluginError, match="'divergefork_childern' is not a divergefork hook.*did you mean divergefork_children"):
        load_dist("dfx-typo")


def test_an_unmarked_hook_function_is_an_error_not_silence(site: Path) -> None:
    install(site, "dfx-unmarked", "def divergefork_children(config):\n    return []\n")
    with pytest.raises(df.PluginError, match="divergefork_children is not marked.*@df.hookimpl"):
        load_dist("dfx-unmarked")


def test_an_optional_hook_for_another_host_is_allowed(site: Path) -> None:
    install(
        site,
        "dfx-optional",
        """
        import divergefork as df

        @df.hookimpl(optionalhook=True)
        def divergefork_future_hook():
            pass
        """,
    )
    assert [p.name for p in load_dist("dfx-optional").plugins] == ["optional"]


CHILDREN_RETURNING = """
    from typing import NoReturn
    import divergefork as df

    def entry(value: int) -> NoReturn:
        df.exit_child(value)

    @df.hookimpl
    def divergefork_children(config):
        return RESULT
"""


@pytest.mark.parametrize(
    ("result", "message"),
    [
        ("5", "returned int 5; return an iterable"),
        ("'abc'", "returned str 'abc'; return an iterable"),
        ("{'a': 1}", "returned dict"),
        ("[df.ChildSpec('x', 1, entry), 7]", "returned int 7 at position 1"),
        ("None", "returned None"),
        ("df.ChildSpec('x', 1, entry)", r"returned one ChildSpec \('x'\), not an iterable"),
    ],
)
def test_children_that_are_not_childspecs_are_refused(site: Path, result: str, message: str) -> None:
    install(site, "dfx-wrong", CHILDREN_RETURNING.replace("RESULT", result))
    plugins = load_dist("dfx-wrong")
    with pytest.raises(df.PluginError, match=message) as info:
        plugins.collect(config_for(plugins))
    assert info.value.plugin == "'wrong' (distribution dfx-wrong 0.1.0)"


@pytest.mark.parametrize("hook", ["divergefork_children", "divergefork_addoption"])
def test_an_exception_in_a_hook_names_the_plugin_and_keeps_the_cause(site: Path, hook: str) -> None:
    install(
        site,
        "dfx-raising",
        f"""
        import divergefork as df

        @df.hookimpl
        def {hook}():
            raise RuntimeError("kaboom")
        """,
    )
    plugins = load_dist("dfx-raising")
    with pytest.raises(df.PluginError) as info:
        plugins.collect(config_for(plugins))
    text = str(info.value)
    assert text.startswith(f"plugin 'raising' (distribution dfx-raising 0.1.0): {hook} raised RuntimeError: kaboom (at ")
    assert "-p no:raising" in text and "Traceback" not in text
    assert isinstance(info.value.__cause__, RuntimeError)


def test_a_generator_failing_halfway_is_the_plugins_error(site: Path) -> None:
    install(
        site,
        "dfx-gen",
        """
        from typing import NoReturn
        import divergefork as df

        def entry(value: int) -> NoReturn:
            df.exit_child(value)

        @df.hookimpl
        def divergefork_children(config):
            yield df.ChildSpec("first", 1, entry)
            raise LookupError("no second child")
        """,
    )
    plugins = load_dist("dfx-gen")
    with pytest.raises(df.PluginError, match="LookupError: no second child") as info:
        plugins.collect(config_for(plugins))
    assert info.value.plugin == "'gen' (distribution dfx-gen 0.1.0)"


def test_duplicate_child_names_name_both_plugins(site: Path, tmp_path: Path) -> None:
    make_distribution(
        site,
        "dfx-dup",
        {
            (one := unique("dfx_one")): marker_plugin("same", tmp_path / "one"),
            (two := unique("dfx_two")): marker_plugin("same", tmp_path / "two"),
        },
        {"one": one, "two": two},
    )
    plugins = load_dist("dfx-dup")
    with pytest.raises(df.PluginError) as info:
        plugins.collect(config_for(plugins))
    text = str(info.value)
    assert info.value.plugin == "'two' (distribution dfx-dup 0.1.0)"
    assert "'same'" in text and "plugin 'one' (distribution dfx-dup 0.1.0)" in text


def test_an_option_clashing_with_a_builtin_one_names_the_plugin(site: Path) -> None:
    install(
        site,
        "dfx-clash",
        """
        import divergefork as df

        @df.hookimpl
        def divergefork_addoption(parser):
            parser.add_argument("--timeout")
        """,
    )
    plugins = load_dist("dfx-clash")
    with pytest.raises(df.PluginError, match="'clash'.*option --timeout clashes.*prefix"):
        plugins.add_options(argparse.ArgumentParser(), reserved=["--timeout", "--jobs"])


def test_report_and_finished_hooks_are_called_per_plugin(site: Path) -> None:
    install(
        site,
        "dfx-observer",
        """
        import divergefork as df
        seen = []

        @df.hookimpl
        def divergefork_report(report):
            seen.append(("report", report.name))

        @df.hookimpl
        def divergefork_finished(reports):
            seen.append(("finished", len(reports)))
        """,
    )
    plugins = load_dist("dfx-observer")
    report = df.Report(name="x", pid=1, outcome=df.Outcome.EXITED, exit_code=0)
    plugins.report(report)
    plugins.finished([report])
    assert getattr(plugins.plugins[0].obj, "seen") == [("report", "x"), ("finished", 1)]


def test_a_subscripted_childspec_can_be_constructed() -> None:
    # Python 3.11: Generic + frozen + slots made ChildSpec[int](...) fail with "super(type, obj)".
    def entry(value: int) -> NoReturn:
        df.exit_child(value)

    spec = df.ChildSpec[int]("typed", 42, entry, timeout=1.5)
    assert (spec.name, spec.value, spec.entry, spec.timeout, spec.capture) == ("typed", 42, entry, 1.5, False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "other"  # type: ignore[misc]
    assert spec == df.ChildSpec("typed", 42, entry, timeout=1.5)
