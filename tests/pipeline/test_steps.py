"""The one declaration of the steps: dvc.yaml is generated from it and names every module a stage runs."""

import yaml

from pipeline.steps import ROOT, STEPS, code_deps, dvc_yaml, step


def test_dvc_yaml_is_the_generated_one():
    assert (ROOT / "dvc.yaml").read_text() == dvc_yaml(), "dvc.yaml is stale: run `make dvc-yaml`"


def test_each_stage_depends_on_every_module_its_step_imports():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for s in STEPS:
        deps = set(stages[s.name]["deps"])
        assert set(code_deps(f"pipeline.{s.module}")) <= deps, s.name
        assert set(s.inputs) <= deps and stages[s.name]["cmd"] == f"medpipe stage {s.name}"


def test_the_modules_a_review_found_missing_are_code_deps():
    # the split (validate), augmentation (train), metrics/plots/Grad-CAM (evaluate), serving (register)
    assert "pipeline/split.py" in step("validate").code()
    assert "pipeline/augment.py" in step("train").code()
    assert {"pipeline/metrics.py", "pipeline/plots.py", "pipeline/explain.py", "pipeline/model.py"} <= set(
        step("evaluate").code())
    assert {"pipeline/serving.py", "pipeline/served_model.py"} <= set(step("register").code())


def test_code_deps_follow_imports_inside_functions(tmp_path):
    assert "pipeline/plots.py" in code_deps("pipeline.evaluate")  # imported inside a function only


def test_every_step_runs_a_run_step_function():
    assert all(callable(s.run) and s.run.__name__ == "run_step" for s in STEPS)
