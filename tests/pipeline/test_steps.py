"""The one declaration of the steps: dvc.yaml is generated from it and names every module a stage runs."""

import pytest
import yaml

from pipeline.steps import ROOT, STEPS, Step, code_deps, dvc_yaml, step


def test_dvc_yaml_is_the_generated_one():
    assert (ROOT / "dvc.yaml").read_text() == dvc_yaml(), "dvc.yaml is stale: run `make dvc-yaml`"


def test_each_stage_depends_on_every_module_its_step_imports():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for s in STEPS:
        deps = set(stages[s.name]["deps"])
        assert set(code_deps(f"pipeline.{s.module}")) <= deps, s.name
        assert set(s.inputs) <= deps
        assert stages[s.name]["cmd"] == f"medpipe stage {s.name}"


def test_the_modules_a_review_found_missing_are_code_deps():
    # the split (validate), augmentation (train), metrics/plots/Grad-CAM (evaluate), serving (register)
    assert "pipeline/split.py" in step("validate").code()
    assert "pipeline/augment.py" in step("train").code()
    assert {"pipeline/metrics.py", "pipeline/plots.py", "pipeline/explain.py", "pipeline/model.py"} <= set(
        step("evaluate").code()
    )
    assert {"pipeline/serving.py", "pipeline/served_model.py"} <= set(step("register").code())


def test_code_deps_follow_imports_inside_functions(tmp_path):
    assert "pipeline/plots.py" in code_deps("pipeline.evaluate")  # imported inside a function only


def test_every_step_runs_a_run_step_function():
    assert all(callable(s.run) and s.run.__name__ == "run_step" for s in STEPS)


def test_each_step_receives_the_results_of_the_steps_it_comes_after():
    import inspect

    names = [s.name for s in STEPS]
    for s in STEPS:
        params = list(inspect.signature(s.run).parameters)
        assert params[:2] == ["params", "ws"], s.name
        received = params[2 : 2 + len(s.after)]
        assert len(received) == len(s.after), s.name
        assert all(names.index(a) < names.index(s.name) for a in s.after), s.name
        for earlier in s.after:  # DVC reruns it when what it receives changes
            assert set(step(earlier).outputs) <= set(s.inputs), (s.name, earlier)
            assert callable(step(earlier).load), earlier


def test_only_a_step_names_its_own_output_folder():
    # Steps get the folders of earlier steps from their typed results, never by a guessed path.
    import re

    own = {s.module: s.name for s in STEPS}
    for path in sorted((ROOT / "pipeline").glob("*.py")):
        if path.stem == "steps":
            continue
        named = set(re.findall(r'\.out / "(\w+)"', path.read_text()))
        allowed = {own.get(path.stem)}
        allowed |= {"checkpoint"} if path.stem == "train" else set()  # its resume point
        allowed |= {"cache"} if path.stem == "validate" else set()  # the scan cache every validation shares
        assert named <= allowed, f"{path.name} names {sorted(named - allowed)}"


def test_load_result_reads_back_what_each_step_returned(tmp_path, tiny_data):
    from pipeline import balance, preprocess, validate
    from pipeline.config import Params, Workspace

    params = Params.model_validate({"preprocess": {"size": 16}})
    ws = Workspace(base=tmp_path, data_root=tiny_data, out=tmp_path / "outputs")
    validated = validate.run_step(params, ws)
    prepared = preprocess.run_step(params, ws, validated)
    balanced = step("balance").stage(params, ws)  # its input read back from outputs/preprocess
    assert step("validate").load(ws) == validated
    assert step("balance").load(ws) == balanced
    assert step("preprocess").load(ws) == prepared.__class__(**{**prepared.__dict__, "cached": True})
    assert balanced == balance.run_step(params, ws, prepared)
    assert len(validated.split_table()) == sum(prepared.split_sizes.values())


def test_a_step_run_alone_before_its_inputs_exist_says_which_to_run(tmp_path, tiny_data):
    import pytest

    from pipeline.config import Params, Workspace
    from pipeline.errors import MedpipeError

    ws = Workspace(base=tmp_path, data_root=tiny_data, out=tmp_path / "outputs")
    with pytest.raises(MedpipeError, match="run `medpipe stage validate` first"):
        step("preprocess").stage(Params(), ws)


def test_a_step_is_run_with_only_its_declared_params(monkeypatch):
    import sys
    import types

    from pipeline.config import Params, UndeclaredParams

    probe = types.ModuleType("pipeline.probe_step")  # a step module of the test's own
    probe.run_step = lambda params, ws: params.balance.strategy
    monkeypatch.setitem(sys.modules, "pipeline.probe_step", probe)
    declared = Step("probe", "probe_step", ("balance",), (), ())
    assert declared.run(Params(), None) == Params().balance.strategy
    probe.run_step = lambda params, ws: params.train.epochs
    with pytest.raises(UndeclaredParams, match="step 'probe' reads params 'train'"):
        declared.run(Params(), None)


def test_promote_declares_the_pixel_params_its_gate_compares():
    from pipeline.config import PIXEL_FIELDS

    assert {f"preprocess.{key}" for key in PIXEL_FIELDS} <= set(step("promote").params)
