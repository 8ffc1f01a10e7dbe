"""The shape of the code base: the library's imports form no cycle and never reach the flows or the CLI."""

import pytest

from pipeline.steps import ROOT, imports_of


def module_graph(package: str = "pipeline") -> dict[str, set[str]]:
    """Module → the medpipe modules it imports, for every module of `package`."""
    graph = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        graph[name] = {m for m in imports_of(path) if m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles among the graph's modules (each once, as a path that returns to its start)."""
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_the_library_has_no_import_cycle():
    graph = module_graph("pipeline")
    assert cycles(graph) == []


def test_the_library_never_imports_the_flows_or_the_cli():
    leaks = {
        m: sorted(i for i in imports if i.split(".")[0] in ("flows", "cli"))
        for m, imports in module_graph("pipeline").items()
    }
    assert {m: i for m, i in leaks.items() if i} == {}


def test_the_flows_have_no_import_cycle_and_never_import_the_cli():
    graph = module_graph("flows")
    assert cycles(graph) == []
    assert not any(i.split(".")[0] == "cli" for imports in graph.values() for i in imports)


@pytest.mark.parametrize(
    "graph, expected",
    [
        ({"a": {"b"}, "b": {"a"}}, [["a", "b", "a"]]),
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
    ],
)
def test_cycles_finds_a_cycle_and_only_a_cycle(graph, expected):
    assert cycles(graph) == expected
