"""Kernel launchers as opaque calls for ``torch.compile`` (``compile_opaque``).

Used by the Triton launchers and by the linear cross-entropy, whose host syncs (finding the
kept rows) would otherwise break the compiled graph. Imports only torch.
"""

import functools

import torch


def compile_opaque(name, fake, mutates_args=()):
    """Make a launcher (a function that runs kernels or syncs with the host) an opaque call
    for ``torch.compile``.

    The launcher is registered as the custom op ``llmcore::<name>`` (``torch.library``), with
    ``fake`` giving its outputs' shapes, so dynamo neither traces into it (nor, under the
    interpreter, into Triton itself) nor breaks the graph at its host syncs. Eager calls skip the
    op and call the launcher directly: a custom op's Python dispatch costs microseconds per
    call, and a block calls several launchers per layer. The launcher must carry type
    annotations (they are the op's schema) and return new tensors only.
    """
    def wrap(fn):
        op = torch.library.custom_op(f"llmcore::{name}", fn, mutates_args=mutates_args)
        op.register_fake(fake)

        @functools.wraps(fn)
        def call(*args):
            return op(*args) if torch.compiler.is_compiling() else fn(*args)

        call.op = op
        return call

    return wrap
