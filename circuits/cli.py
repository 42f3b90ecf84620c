"""The `circuits` command.

circuits demo [--out DIR]     sites and capture on the embedded conv net and transformer
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch


def demo(out: Path) -> None:
    """Show the same calls on a conv net and a transformer whose circuits are known."""
    import circuits as cc

    out.mkdir(parents=True, exist_ok=True)
    cnn = cc.zoo.corner_cnn()
    images, labels = cc.zoo.corner_images(256, seed=0)
    n_sites = len(cc.sites(cnn, images[:1]))
    print(f"corner_cnn: {n_sites} sites; true circuit {sorted(cnn.circuit.edges)}")
    cache = cc.capture(cnn, images, sites=["relu1", "relu2"])
    fires = cache["relu2"].amax(dim=(2, 3)) > 0
    for ch in range(fires.shape[1]):
        rate = {int(c): float(fires[labels == c, ch].float().mean()) for c in (0, 1)}
        print(f"  relu2 channel {ch}: fires on {rate[1]:.0%} of corners, {rate[0]:.0%} of others")

    model = cc.zoo.tiny_transformer()
    tokens = torch.randint(0, 50, (4, 16), generator=torch.Generator().manual_seed(0))
    table = cc.sites(model, tokens)
    print(f"\n{type(model).__name__}: {len(table)} sites, for example")
    print(table[table.site.str.contains("blocks.0.attn")].to_string(index=False))
    disk = cc.capture_to_disk(
        cnn, images, out / "corner-acts", sites=["relu2"], batch_size=64, overwrite=True
    )
    print(f"\nwrote {disk.rows} examples of relu2 to {disk.folder}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="circuits", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run_demo = commands.add_parser("demo", help="run the demo on the embedded models")
    run_demo.add_argument(
        "--out",
        type=Path,
        default=Path("circuits-demo"),
        help="folder for the files the demo writes (default: circuits-demo)",
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
        elif args.command == "show":
            g = load_graph(args.file)
            title = f"{args.file.name}: {len(g)} nodes, {g.number_of_edges()} edges"
            print(f"wrote {save_html(g, args.out or args.file.with_suffix('.html'), title=title)}")
        else:
            print(f"wrote {save_graph(load_graph(args.source), args.target)}")
    except CircuitsError as err:
        print(f"circuits {args.command}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
