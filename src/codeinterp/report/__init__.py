"""The self-contained HTML report: `build` assembles the sections, `charts` draws them."""
