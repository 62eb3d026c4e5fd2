"""Hugging Face interop: the Llama-layout adapter (convert) and export/import of folders (folder)."""
