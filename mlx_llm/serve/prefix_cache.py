"""Keys and values of earlier requests, reused for the prompt prefix a new request shares.

A multi-turn chat sends the whole conversation every turn; its start (the
system message, earlier turns) is what the previous request already ran
through the model. Finished sequences leave their batch-of-one KV state here,
keyed by the token ids it holds; a new prompt takes the entry with the
longest common prefix and runs only the rest. Entries are bounded in number
and in total positions, the least recently used going first.
"""

from __future__ import annotations

from collections import OrderedDict

import mlx.core as mx

from ..blocks.cache import KVCache
from .batch_cache import single_cache


def common_prefix(first, second) -> int:
    """Length of the longest common prefix of two id sequences."""
    count = 0
    for a, b in zip(first, second):
        if a != b:
            break
        count += 1
    return count


class PrefixCache:
    """An LRU store of ``token ids -> per-layer (keys, values)``.

    Args:
        max_entries: Most sequences kept (0 turns reuse off).
        max_positions: Most positions kept over all entries.
    """

    def __init__(self, max_entries: int = 8, max_positions: int = 65536):
        self.max_entries = max_entries
        self.max_positions = max_positions
        self._entries: OrderedDict[tuple[int, ...], list[tuple[mx.array, mx.array]]] = OrderedDict()
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def positions(self) -> int:
        return sum(len(ids) for ids in self._entries)

    def lookup(self, prompt_ids: list[int]) -> tuple[list[KVCache] | None, int]:
        """Caches holding the longest stored prefix of ``prompt_ids``.

        At least the last prompt token is left to run, since its logits
        choose the first new token.

        Returns:
            ``(caches, length)``: batch-of-one caches holding the first
            ``length`` prompt positions, or ``(None, 0)`` when nothing is shared.
        """
        best, best_length = None, 0
        for ids in self._entries:
            length = min(common_prefix(ids, prompt_ids), len(prompt_ids) - 1)
            if length > best_length:
                best, best_length = ids, length
        if best is None:
            return None, 0
        self._entries.move_to_end(best)
        self.hits += 1
        return single_cache(self._entries[best], best_length), best_length

    def store(self, ids: list[int], state: list[tuple[mx.array, mx.array]]) -> None:
        """Keep ``state`` (``(1, H, len(ids), D)`` keys and values per layer) for ``ids``.

        An entry that is a prefix of ``ids`` is replaced: the new one serves
        every prompt it served.
        """
        if self.max_entries < 1 or not ids or len(ids) > self.max_positions:
            return
        key = tuple(ids)
        for held in [held for held in self._entries if len(held) <= len(key) and key[: len(held)] == held]:
            del self._entries[held]
        mx.eval(state)
        self._entries[key] = state
        while len(self._entries) > self.max_entries or self.positions > self.max_positions:
            self._entries.popitem(last=False)
