"""The Hugging Face adapter: `attn_implementation="prism"` for transformers models, and all that
prism-ops knows of model families.

    prism_ops.hf.register()
    model = AutoModel.from_pretrained(path, attn_implementation="sdpa")
    runner = prism_ops.hf.configure(model, num_partitions=4, segment_size=16)   # an HFRunner

After `configure`, every attention module holds one `PrismLayer` (config, index, head dim,
projections, partition strategy: `prism_ops.strategy`). Simulated, each layer runs
`partitioned_attention`: the sequence is cut into `num_partitions` chunks, as if each ran on its
own rank, and each chunk sees the others through segment means. With `comm=` this process is one
MPI rank (`prism_ops.distributed`). The settings are one `PrismConfig` (`prism_ops.config`), or
its fields and a preset name as keywords. The SDPA mask builder is registered with the
attention function, so causal models stay causal and tokenizer padding masks are honoured.

Every keyword a module passes its attention function is handled or refused at `configure`, before
any forward: sliding windows and logit soft-capping run exactly at segment size 1
(`prism_ops.ops.window_attention` says what they mean for summary rows); sinks, position biases,
packed sequences and unknown keywords are refused, naming the feature and the model.

    configure.py        register, configure, config_of, attention_modules
    forward.py          prism_attention_forward: the function transformers calls per layer
    attention_calls.py  the keywords an attention module passes, read from its source
    model.py            model kind, positions, the local forward, decoding, key/value
                        projections, weight digest
    runner.py           HFRunner: the model, its resolved config and partition, and model.py's
                        functions as the runtimes call them (`prism_ops.request_types.ModelRunner`)

transformers is imported only inside the functions that need it.
"""

from .configure import NAME, attention_modules, config_of, configure, register
from .forward import prism_attention_forward
from .runner import HFRunner, runner
from .model import (DECODER_SUFFIXES, decode_tokens, kv_bias, kv_weight, local_hidden, max_positions,
                    model_fingerprint, model_kind, sampled_weights_digest, transformers_version)

__all__ = ["DECODER_SUFFIXES", "HFRunner", "NAME", "attention_modules", "config_of", "configure", "decode_tokens", "kv_bias",
           "kv_weight", "local_hidden", "max_positions", "model_fingerprint", "model_kind", "prism_attention_forward",
           "register", "runner", "sampled_weights_digest", "transformers_version"]
