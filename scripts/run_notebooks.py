"""Execute notebooks in place, so that they are committed with their outputs (``make notebooks``).

    python scripts/run_notebooks.py notebooks/*.ipynb

Each notebook runs top to bottom in a fresh kernel of this Python (``ipykernel``), from its own folder, as a
reader opening it in Jupyter would; its outputs are replaced and the file rewritten. Cell timings are not
recorded and stderr (library warnings) is not kept, so re-running an unchanged notebook on unchanged code
rewrites the same file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def execute(path: Path, timeout: int) -> None:
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    for index, cell in enumerate(notebook.cells):  # nbformat 5 wants cell ids; fixed ones keep diffs small
        cell.setdefault("id", f"cell-{index}")
    client = NotebookClient(
        notebook,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
        record_timing=False,
    )
    client.execute()
    for cell in notebook.cells:  # warnings of the machine that ran it are not part of what a reader reads
        if "outputs" in cell:
            cell.outputs = [o for o in cell.outputs if not (o.output_type == "stream" and o.name == "stderr")]
    notebook.metadata.pop("widgets", None)
    nbformat.write(notebook, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--timeout", type=int, default=600, help="seconds a cell may run")
    args = parser.parse_args(argv)
    for path in args.notebooks:
        if path.suffix != ".ipynb" or not path.is_file():
            sys.exit(f"run_notebooks: {path} is not a notebook file (.ipynb)")
        print(f"executing {path}", flush=True)
        execute(path, args.timeout)


if __name__ == "__main__":
    main()
