"""The generated examples of docs/kirin_ops.md and docs/arithmetic.md (IR lines, the ablation's
console, counts) are what the current build makes: ``scripts/update_op_docs.py`` rewrites them."""

from __future__ import annotations

import importlib.util

import pytest
from conftest import REPO

_spec = importlib.util.spec_from_file_location("update_op_docs", REPO / "scripts" / "update_op_docs.py")
update_op_docs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(update_op_docs)


def test_every_generator_has_its_block_on_one_page():
    names = [name for doc in update_op_docs.DOCS for name in update_op_docs.blocks(doc.read_text())]
    assert sorted(names) == sorted(update_op_docs.BLOCKS)


@pytest.mark.parametrize("doc", update_op_docs.DOCS, ids=lambda doc: doc.name)
def test_generated_blocks_are_current(doc):
    text = doc.read_text()
    fresh = update_op_docs.update(text)
    assert update_op_docs.blocks(text) == update_op_docs.blocks(fresh), (
        f"{doc.name} is out of date: run .venv/bin/python scripts/update_op_docs.py"
    )
    assert fresh == text


def test_the_example_listing_is_what_the_emitter_writes():
    assert (REPO / update_op_docs.LISTING).read_text() == update_op_docs.emitted_listing(), (
        "docs/examples/tiny_llama.nl is out of date: run .venv/bin/python scripts/update_op_docs.py"
    )
