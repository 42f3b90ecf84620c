"""The `circuits` command.

circuits demo [--out DIR] [--features]
                              discover the embedded induction model's circuit and export it;
                              with --features, its feature circuit over the zoo's SAEs too
circuits show FILE [--out F]  render a saved graph (.json, .graphml, .gexf) to HTML
circuits convert IN OUT       convert a graph file to another format (chosen by suffix)

A mistake (a missing or corrupted file, a folder that cannot be written) is one line on stderr
and exit status 2; --debug shows the traceback instead. No command overwrites its own input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def demo(out: Path) -> None:
    """Discover the circuit of the embedded induction transformer and export it.

    EAP-IG scores every edge of the model's graph (embeddings, heads, logits) for the next-token
    loss on repeated tokens, against a corrupted input whose first occurrence is replaced;
    `discover` keeps the fewest strongest edges whose faithfulness reaches 0.8, and the circuit is
    written as JSON, GraphML and an HTML page (with plotly.js written once beside it).
    """
    import circuits as cc
    from circuits.errors import ConfigError

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a file; the demo writes a folder of files")
    out.mkdir(parents=True, exist_ok=True)
    model = cc.zoo.induction_transformer()
    clean, corrupt, batch = cc.zoo.induction_pair(16, seed=0)
    loss = cc.metrics.cross_entropy(clean, mask=batch.is_repeat)
    with torch.no_grad():
        clean_loss, corrupt_loss = float(loss(model(clean))), float(loss(model(corrupt)))
    print(
        f"induction_transformer ({type(model).__name__}): loss on the repeated segment "
        f"{clean_loss:.2f} clean, {corrupt_loss:.2f} with the first occurrence corrupted"
    )
    meta = {"model": "circuits.zoo.induction_transformer", "seed": 0}
    circuit = cc.discover(model, clean, corrupt, loss, method="eap-ig", meta=meta)
    scored = json.loads(circuit.graph["thresholds"])["candidates"]["edges"]
    print(
        f"\nEAP-IG scored {scored} edges; the circuit keeps {circuit.number_of_edges()} edges "
        f"between {len(circuit)} nodes, faithfulness {circuit.graph['faithfulness']:.2f} "
        "(1: the circuit alone restores the clean loss, 0: it restores none of it):"
    )
    edges = sorted(circuit.edges(data="weight"), key=lambda e: -abs(e[2]))
    for source, target, weight in edges:
        label = circuit.nodes
        print(f"  {label[source]['label']:>8} -> {label[target]['label']:<8} {weight:+.3f}")
    heads = cc.zoo.INDUCTION_HEADS
    print(
        f"\nknown by construction: previous-token head a{heads['previous_token'][0]}."
        f"h{heads['previous_token'][1]}, induction head a{heads['induction'][0]}."
        f"h{heads['induction'][1]}"
    )
    for suffix in ("json", "graphml"):
        print(f"wrote {cc.save_graph(circuit, out / f'induction-circuit.{suffix}')}")
    print(f"wrote {cc.save_html(circuit, out / 'induction-circuit.html')}")


def demo_features(out: Path) -> None:
    """The feature circuit of one repeated sequence: the same model, its residual stream read by
    the zoo's SAEs (after layers 0 and 1), each edge a direct effect in the replacement model.
    Written as circuit-tracer's attribution-graph JSON and an HTML page."""
    import circuits as cc

    model = cc.zoo.induction_transformer()
    clean = cc.zoo.induction_pair(1, seed=0)[0][:, :48]  # ends inside the repeated segment
    saes = [cc.zoo.induction_sae(0), cc.zoo.induction_sae(1)]
    g = cc.feature_graph(model, clean, saes, node_threshold=0.9, progress=False)
    kinds = [a["kind"] for _, a in g.nodes(data=True)]
    print(
        f"\nfeature circuit of one repeated sequence ({clean.shape[1]} tokens) over the SAEs "
        f"after layers 0 and 1: {kinds.count('feature')} features, {kinds.count('error')} "
        f"error nodes, {g.number_of_edges()} edges; replacement score "
        f"{g.graph['replacement_score']:.2f}, completeness {g.graph['completeness_score']:.2f}, "
        f"faithfulness {g.graph['faithfulness']:.2f}"
    )
    top = sorted(
        (k for k, a in g.nodes(data=True) if a["kind"] in ("feature", "error")),
        key=lambda k: -g.nodes[k]["influence"],
    )
    for key in top[:8]:
        a = g.nodes[key]
        print(f"  {key:<34} influence {a['influence']:.3f} activation {a['activation']:.2f}")
    json_path = cc.save_graph(g, out / "induction-features.json", format="attribution-graph")
    print(f"wrote {json_path} (circuit-tracer / Neuronpedia JSON)")
    print(f"wrote {cc.save_html(g, out / 'induction-features.html')}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="circuits", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    commands = parser.add_subparsers(dest="command", required=True)
    run_demo = commands.add_parser("demo", help="discover the embedded model's circuit")
    run_demo.add_argument(
        "--out",
        type=Path,
        default=Path("circuits-demo"),
        help="folder for the files the demo writes (default: circuits-demo)",
    )
    run_demo.add_argument(
        "--features",
        action="store_true",
        help="also build the model's feature circuit over the zoo's SAEs",
    )
    show = commands.add_parser("show", help="render a saved graph to HTML")
    show.add_argument("file", type=Path)
    show.add_argument("--out", type=Path, help="HTML file to write (default: FILE with .html)")
    convert = commands.add_parser("convert", help="convert a graph file to another format")
    convert.add_argument("source", type=Path)
    convert.add_argument("target", type=Path)
    args = parser.parse_args(argv)
    from circuits.errors import CircuitsError
    from circuits.graph import load_graph, save_graph, save_html

    try:
        if args.command == "demo":
            demo(args.out)
            if args.features:
                demo_features(args.out)
        elif args.command == "show":
            out = args.out or args.file.with_suffix(".html")
            _not_onto(args.file, out)
            g = load_graph(args.file)
            title = f"{args.file.name}: {len(g)} nodes, {g.number_of_edges()} edges"
            print(f"wrote {save_html(g, out, title=title)}")
        else:
            _not_onto(args.source, args.target)
            print(f"wrote {save_graph(load_graph(args.source), args.target)}")
    except (CircuitsError, OSError) as err:
        if args.debug:
            raise
        print(f"circuits {args.command}: {err}", file=sys.stderr)
        return 2
    return 0


def _not_onto(source: Path, target: Path) -> None:
    """Refuse to write onto the file being read."""
    from circuits.errors import ConfigError

    if target.resolve() == source.resolve():
        raise ConfigError(f"{str(target)!r} is the input file; write the result somewhere else")


if __name__ == "__main__":
    sys.exit(main())
