"""`edgert generate MODEL --chat` renders each family's own chat template — taken from GGUF
metadata, or from an HF directory's tokenizer_config.json — exactly as llama-cpp-python's jinja
chat formatter renders it. The templates are the real ones llama.cpp ships for its tests
(models/templates/*.jinja in the llama-cpp-python source distribution)."""

import json
import subprocess
import sys

import pytest
from edgert.compiler.frontends import load_model
from make_synthetic_gguf import make_synthetic_gguf
from parity import llama_cpp_models_dir
from test_hf_archs import hf_checkpoint

pytestmark = pytest.mark.parity
#: architecture -> (llama.cpp's template file, what a user turn renders to in that family)
FAMILIES = {
    "qwen2": ("Qwen-Qwen2.5-7B-Instruct", "<|im_start|>user\nHi there<|im_end|>\n"),
    "qwen3": ("Qwen-Qwen3-0.6B", "<|im_start|>user\nHi there<|im_end|>\n"),
    "qwen3moe": ("Qwen-Qwen3-0.6B", "<|im_start|>user\nHi there<|im_end|>\n"),
    "llama3": ("meta-llama-Llama-3.1-8B-Instruct",
               "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"),
    "phi3": ("microsoft-Phi-3.5-mini-instruct", "<|user|>\nHi there<|end|>\n<|assistant|>\n"),
    "smollm3": ("HuggingFaceTB-SmolLM3-3B", "<|im_start|>user\nHi there<|im_end|>\n"),
    "gemma3": ("google-gemma-2-2b-it", "<start_of_turn>user\nHi there<end_of_turn>\n"),
    "qwen2moe": ("Qwen-Qwen2.5-7B-Instruct", "<|im_start|>user\nHi there<|im_end|>\n"),
    "mixtral": ("mistralai-Mistral-Nemo-Instruct-2407", "[INST]Hi there[/INST]"),
}  # fmt: skip


def template(name: str) -> str:
    return (llama_cpp_models_dir() / "templates" / f"{name}.jinja").read_text()


def llama_cpp_rendering(tpl: str, tok, messages) -> str:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    def piece(i):
        return tok.tok.id_to_token(i) if i is not None else ""

    f = Jinja2ChatFormatter(tpl, eos_token=piece(tok.meta.eos_id), bos_token=piece(tok.meta.bos_id))
    return f(messages=messages).prompt


@pytest.mark.parametrize("arch", list(FAMILIES))
def test_chat_uses_the_family_template(tmp_path, arch):
    name, user_turn = FAMILIES[arch]
    tpl = template(name)
    layers = {"gemma3": 6, "smollm3": 4}.get(arch, 2)
    g = make_synthetic_gguf(out=tmp_path / "m.gguf", arch=arch, qtype="F32", progress=False,
                            layers=layers, chat_template=tpl)  # fmt: skip
    r = subprocess.run(
        [sys.executable, "-m", "edgert", "generate", str(g), "-p", "Hi there", "--chat",
         "-n", "2", "--json", "--ctx", "2048"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    d = json.loads(r.stdout)
    m = load_model(g)
    want = llama_cpp_rendering(tpl, m.tokenizer, [{"role": "user", "content": "Hi there"}])
    assert d["prompt"] == want
    assert user_turn in d["prompt"]
    assert d["prompt_tokens"] == len(m.tokenizer.encode(want))
    # the same model as an HF directory: the template comes from tokenizer_config.json
    hf = tmp_path / "hf"
    hf.mkdir()
    hf_checkpoint(m, hf, arch)
    m.tokenizer.save(hf)
    (hf / "tokenizer_config.json").write_text(json.dumps({"chat_template": tpl}))
    h = load_model(hf)
    msgs = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "And?"}]  # fmt: skip
    assert h.tokenizer.apply_chat_template(msgs) == llama_cpp_rendering(tpl, h.tokenizer, msgs)
