"""`data.verify=lazy` (the run default): a corruption that keeps every id inside the vocabulary
passes the size check but fails the shard's sha256 on the first read that touches it."""

import numpy as np
import pytest

from llmcore.data import TokenShards, write_token_folder
from llmcore.errors import DataError


def test_in_vocabulary_corruption_is_caught_on_first_read(tmp_path):
    rng = np.random.default_rng(0)
    docs = [np.append(rng.integers(4, 300, size=30), 2) for _ in range(20)]
    write_token_folder(str(tmp_path / "d"), {"train": docs}, tokenizer={"hash": "a" * 64, "vocab_size": 300,
                                                                         "eos_id": 2}, shard_tokens=100)
    shard = sorted((tmp_path / "d").glob("**/*.bin"))[1]
    data = np.fromfile(shard, dtype=np.uint16)
    data[5] = 7 if data[5] != 7 else 8  # still a valid id
    data.tofile(shard)
    size = TokenShards(str(tmp_path / "d"), verify="size")
    size.read(0, size.num_tokens)  # what the old default saw: nothing wrong
    lazy = TokenShards(str(tmp_path / "d"), verify="lazy")
    lazy.read(0, 50)  # shard 0 is intact
    with pytest.raises(DataError, match=rf"{shard.name} fails its sha256 check"):
        lazy.read(0, lazy.num_tokens)
