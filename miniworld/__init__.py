"""The miniature world: a seeded bilingual domain, its tokenizer, tiny source models and data sets.

`python -m miniworld.build --out assets` regenerates everything in `assets/` (see assets/README.md).
"""
