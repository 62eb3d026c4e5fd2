"""The Hugging Face tokenizers backend: a `tokenizer.json` (BPE, WordPiece, ... as the
`tokenizers` library reads it, e.g. a Llama-3 128k BPE) behind the same interface as our
SentencePiece `Tokenizer`, for continued pretraining of an existing HF model.

Used through `Tokenizer.load` (a folder with `tokenizer.json` and no `tokenizer.model`), by
`llmcore data prepare --tokenizer <hf folder>` and `import-hf`, which call `from_hf_folder` to
put the special tokens recipes need into the vocabulary, always the same way, so that data
prepared from a folder and a model imported from it agree on every id:
1. a token already in the vocabulary keeps its id;
2. else it takes the first unused reserved token (`<|reserved_special_token_N|>` as Llama 3
   has, or `<reserved_N>`), renamed, so the vocabulary does not grow;
3. else it is appended as an added token (the model's embedding then grows: `import-hf`
   resizes it and says so in the log).
Loaded offline from the folder alone (`tokenizers` never reaches the hub here). Our folder
keeps `tokenizer.json`, `tokenizer_config.json` and `special_tokens.json` (control and
recipe ids, vocabulary size, hash), so a changed file is refused like a SentencePiece one.
`tokenizers` is an optional extra (`pip install 'llmcore[hf]'`), imported only here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from llmcore.errors import TokenizerError
from llmcore.fsutil import write_dir_atomically
from llmcore.reserved_slots import lend, special_id

HF_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
MAP_FILE = "special_tokens_map.json"
META_FILE = "special_tokens.json"
BACKEND = "hf-tokenizers"
_RESERVED = re.compile(r"^<\|reserved_special_token_\d+\|>$|^<reserved_\d+>$")
_ROLES = ("unk", "bos", "eos", "pad")


def _tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise TokenizerError("a tokenizer.json folder needs the `tokenizers` package: "
                             "pip install 'llmcore[hf]'") from None
    return tokenizers


def _role_names(folder: str) -> dict[str, str]:
    """bos/eos/unk/pad token strings from tokenizer_config.json / special_tokens_map.json."""
    names: dict[str, str] = {}
    for file in (MAP_FILE, CONFIG_FILE):  # the config wins where both name a role
        path = os.path.join(folder, file)
        if not os.path.isfile(path):
            continue
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except ValueError as e:
            raise TokenizerError(f"{path} is not JSON: {e}") from None
        for role in _ROLES:
            value = data.get(f"{role}_token") if isinstance(data, dict) else None
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str):
                names[role] = value
    return names


class HFTokenizer:
    """A `tokenizers.Tokenizer` with our control and special-token ids."""

    backend = BACKEND

    def __init__(self, hf_json: str, ids: dict[str, int], config: dict, path: str | None = None):
        self._json = hf_json
        self._tok = _tokenizers().Tokenizer.from_str(hf_json)
        self._ids = dict(ids)
        self._config = dict(config)
        self.path = path
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.eos_id = ids["eos"]
        self.bos_id = ids.get("bos", self.eos_id)  # Llama 3 has one; a GPT-2 BPE only an end token
        self.pad_id = ids.get("pad", self.eos_id)  # pads are never trained on or attended to
        self.unk_id = ids.get("unk", -1)  # byte-level BPEs have no unknown token
        self.special_ids = {k: v for k, v in ids.items() if k not in _ROLES}
        self._aliases: dict[str, int] = {}  # run-time tokens in reserved slots (`reserve`)
        h = hashlib.sha256(hf_json.encode())
        h.update(json.dumps(ids, sort_keys=True).encode())
        self.hash = h.hexdigest()

    # ------------------------------------------------------------------ building
    @classmethod
    def from_hf_folder(cls, folder: str, special_tokens: Sequence[str] = ()) -> HFTokenizer:
        """The tokenizer of a Hugging Face folder (`tokenizer.json` + `tokenizer_config.json`),
        with `special_tokens` put into its vocabulary by the rule in the module docstring."""
        folder = os.path.abspath(folder)
        path = os.path.join(folder, HF_FILE)
        if not os.path.isfile(path):
            raise TokenizerError(f"{folder} has no {HF_FILE} (a Hugging Face tokenizer folder needs one)")
        text = Path(path).read_text(encoding="utf-8")
        try:
            body = json.loads(text)
            tok = _tokenizers().Tokenizer.from_str(text)
        except Exception as e:  # noqa: BLE001 - tokenizers raises plain Exceptions for a malformed file
            raise TokenizerError(f"{path} is not a tokenizers file: {e}") from None
        names = _role_names(folder)
        ids: dict[str, int] = {}
        for role, name in names.items():
            i = tok.token_to_id(name)
            if i is None:
                raise TokenizerError(f"{folder}: its {role}_token {name!r} is not in {HF_FILE}")
            ids[role] = i
        if "eos" not in ids:
            raise TokenizerError(f"{folder}: no eos_token in {CONFIG_FILE} or {MAP_FILE} (documents end with it)")
        added = body.setdefault("added_tokens", [])
        free = [e for e in added if _RESERVED.match(e["content"]) and e["content"] not in names.values()]
        appended = []
        for name in special_tokens:
            if name in ids:
                continue
            existing = tok.token_to_id(name)
            if existing is not None:
                ids[name] = existing
            elif free:
                slot = free.pop(0)
                _rename_in_model(body, slot["content"], name, slot["id"])
                slot.update(content=name, special=True)
                ids[name] = slot["id"]
            else:
                appended.append(name)
        if appended:  # new ids after every existing one, in the order asked
            start = tok.get_vocab_size(with_added_tokens=True)
            for k, name in enumerate(appended):
                added.append({"id": start + k, "content": name, "single_word": False, "lstrip": False,
                              "rstrip": False, "normalized": False, "special": True})
                ids[name] = start + k
        config = {"model_max_length": _model_max_length(folder), "role_names": names}
        out = cls(json.dumps(body, ensure_ascii=False), ids, config)
        for name in special_tokens:  # the file must give back what was assigned
            if out._tok.token_to_id(name) != ids[name]:
                raise TokenizerError(f"{folder}: could not place special token {name!r} at id {ids[name]}")
        out.appended = appended
        return out

    # ------------------------------------------------------------------ files
    @classmethod
    def load(cls, path: str) -> HFTokenizer:
        """Load one of our HF-backed folders (`tokenizer.json` + `special_tokens.json`), or a
        plain HF folder as it is (no special tokens added)."""
        path = os.path.abspath(path)
        meta_path = os.path.join(path, META_FILE)
        if not is_llmcore_folder(path):
            tok = cls.from_hf_folder(path)
            tok.path = path
            return tok
        try:
            meta = json.loads(Path(meta_path).read_text(encoding="utf-8"))
            ids = {k: int(v) for k, v in meta["ids"].items()}
            config = dict(meta.get("config", {}))
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise TokenizerError(f"{meta_path} is not an llmcore {BACKEND} record: {e}") from None
        hf_path = os.path.join(path, HF_FILE)
        if not os.path.isfile(hf_path):
            raise TokenizerError(f"tokenizer folder {path} lacks {HF_FILE} ({hf_path} is missing)")
        try:
            tok = cls(Path(hf_path).read_text(encoding="utf-8"), ids, config, path)
        except Exception as e:  # noqa: BLE001 - as above
            raise TokenizerError(f"{hf_path} is not a tokenizers file: {e}") from None
        if meta.get("hash") != tok.hash:
            raise TokenizerError(f"tokenizer folder {path}: files do not match their recorded hash "
                                 f"{meta.get('hash')} (now {tok.hash}); a file was changed")
        return tok

    def save(self, out_dir: str, overwrite: bool = False) -> str:
        """Write tokenizer.json, tokenizer_config.json, special_tokens_map.json and our
        special_tokens.json into `out_dir` atomically."""
        out_dir = os.path.abspath(out_dir)
        if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
            raise TokenizerError(f"tokenizer folder {out_dir} exists and is not empty; pass overwrite=True")
        def write(tmp: Path) -> None:
            (tmp / HF_FILE).write_text(self._json, encoding="utf-8")
            config, names = self.hf_config(self._config.get("model_max_length") or 1 << 30)
            for name, obj in ((CONFIG_FILE, config), (MAP_FILE, names),
                              (META_FILE, {"backend": BACKEND, "ids": self._ids, "config": self._config,
                                           "vocab_size": self.vocab_size, "hash": self.hash})):
                (tmp / name).write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")

        write_dir_atomically(Path(out_dir), write)
        if self.path is None:
            self.path = out_dir
        return out_dir

    @property
    def hf_json(self) -> str:
        """The tokenizer.json text (with the special tokens placed)."""
        return self._json

    def hf_config(self, max_len: int) -> tuple[dict, dict]:
        """(tokenizer_config.json, special_tokens_map.json) for transformers'
        `PreTrainedTokenizerFast`: the role tokens by name; the added tokens are in tokenizer.json."""
        names = {f"{role}_token": self.id_to_piece(self._ids[role]) for role in _ROLES if role in self._ids}
        config = {"tokenizer_class": "PreTrainedTokenizerFast", **names, "model_max_length": max_len,
                  "clean_up_tokenization_spaces": False,
                  "additional_special_tokens": sorted(self.special_ids, key=self.special_ids.get)}
        return config, names

    def __getstate__(self) -> dict:
        return {"json": self._json, "ids": self._ids, "config": self._config, "path": self.path,
                "aliases": self._aliases}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["json"], state["ids"], state["config"], state["path"])
        self._aliases = dict(state.get("aliases", {}))

    def __repr__(self) -> str:
        return (f"HFTokenizer(path={self.path!r}, vocab_size={self.vocab_size}, "
                f"specials={len(self.special_ids)}, hash={self.hash[:12]})")

    # ------------------------------------------------------------------ encode / decode
    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """Text -> ids (the tokenizer's own template, e.g. Llama 3's bos, is not applied:
        `bos`/`eos` add ours)."""
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def encode_batch(self, texts: Iterable[str], bos: bool = False, eos: bool = False) -> list[list[int]]:
        """Several texts -> one id list each (the Rust batched path)."""
        out = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return [([self.bos_id] if bos else []) + e.ids + ([self.eos_id] if eos else []) for e in out]

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text. Recipe special tokens come back as their names; bos/eos/pad as ""."""
        ids = [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise TokenizerError(f"cannot decode ids {bad[:5]}: outside the vocabulary [0, {self.vocab_size})")
        control = {self._ids[r] for r in ("bos", "eos", "pad") if r in self._ids}
        return self._tok.decode([i for i in ids if i not in control], skip_special_tokens=False)

    def token_id(self, name: str) -> int:
        """The id of a special token by name ("<pause>", "eos", ...)."""
        return special_id(name, self._ids, self._aliases, self.path or "")

    def reserve(self, names: Sequence[str]) -> dict[str, int]:
        """`Tokenizer.reserve`'s contract for this backend: each of `names` the tokenizer lacks
        gets the next free reserved added token (`<|reserved_special_token_i|>`, `<reserved_i>`),
        held in memory (files, encoding and `hash` unchanged). Returns name -> id."""
        taken = set(self._ids.values()) | set(self._aliases.values())
        free = [e["id"] for e in json.loads(self._json).get("added_tokens", [])
                if _RESERVED.match(e["content"]) and e["id"] not in taken]
        lend(names, self._ids, self._aliases, free, self.path or "")
        return {n: self.token_id(n) for n in names}

    def id_to_piece(self, i: int) -> str:
        """The vocabulary entry of one id."""
        piece = self._tok.id_to_token(int(i))
        if piece is None:
            raise TokenizerError(f"id {i} is not in the vocabulary [0, {self.vocab_size})")
        return piece


def _rename_in_model(body: dict, old: str, new: str, i: int) -> None:
    """A reserved token may also be in the model's own vocabulary (a `tokenizers` trainer puts
    special tokens there; Llama 3 keeps them in added_tokens only): rename it there too."""
    vocab = (body.get("model") or {}).get("vocab")
    if isinstance(vocab, dict) and vocab.get(old) == i:
        vocab[new] = vocab.pop(old)
    elif isinstance(vocab, list) and i < len(vocab) and isinstance(vocab[i], list) and vocab[i][0] == old:
        vocab[i][0] = new  # Unigram: [piece, score] at the token's id


def _model_max_length(folder: str) -> int | None:
    path = os.path.join(folder, CONFIG_FILE)
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8")).get("model_max_length")
    except (OSError, ValueError, AttributeError):
        return None
    return int(value) if isinstance(value, (int, float)) and value < 1 << 40 else None


def is_llmcore_folder(path: str) -> bool:
    """True for a folder `HFTokenizer.save` wrote (its special_tokens.json names this backend)."""
    try:
        meta = json.loads(Path(path, META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("backend") == BACKEND


def is_hf_folder(path: str) -> bool:
    """True for a folder this backend reads: a tokenizer.json and no SentencePiece model."""
    return os.path.isfile(os.path.join(path, HF_FILE)) and not os.path.isfile(os.path.join(path, "tokenizer.model"))
