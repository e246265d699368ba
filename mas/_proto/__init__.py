"""Generated protobuf code for ``proto/mas/runtime/v1/runtime.proto``.

Do not edit: regenerate with ``nox -s proto``.
"""
