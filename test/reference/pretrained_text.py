#!/usr/bin/env python3
"""The text side of a pretrained model directory in the real open_clip / hub layout, with random
weights, and the prompt embeddings PyTorch computes from it, for the text-embed and --text-tower
tests.

Usage: python3 test/reference/pretrained_text.py DIR clip|biomedclip IDS.json [SEED]

DIR already holds the tokenizer files (test/helpers/tokenizer-files.ts). Writes or extends
DIR/open_clip_config.json (model_cfg.text_cfg; a small vision_cfg and embed_dim 16 when there is
no config yet) and DIR/open_clip_pytorch_model.bin (torch.save of the state dict; text tensors are
added to one already there, e.g. test/reference/pretrained_vision.py's image tower):
  clip        CLIP's TextTransformer as the CLIP class holds it (top-level names), QuickGELU
              (model_cfg.quick_gelu), width 32, 4 heads, 2 layers, context 77
  biomedclip  HFTextEncoder over BERT as BiomedCLIP's config names it (text_cfg.hf_model_name,
              proj 'mlp', pooler_type 'cls_last_hidden_state_pooler', context 256): width 48,
              4 heads (from a Hugging Face config.json), 2 layers, 300 positions, with the unused
              pooler and the position_ids buffer a transformers checkpoint carries
IDS.json: {prompt: token ids without padding}. Prints one JSON line {prompt: unit embedding}.
"""
import json, os, sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from text_towers import ClipText, Text  # noqa: E402

out, variant, ids_file = sys.argv[1], sys.argv[2], sys.argv[3]
seed = int(sys.argv[4]) if len(sys.argv) > 4 else 0
torch.manual_seed(seed)
cfg_path = os.path.join(out, 'open_clip_config.json')
bin_path = os.path.join(out, 'open_clip_pytorch_model.bin')
cfg = json.load(open(cfg_path)) if os.path.exists(cfg_path) else {
    'model_cfg': {'embed_dim': 16, 'vision_cfg': {'image_size': 32, 'layers': 2, 'width': 64, 'patch_size': 8, 'head_width': 32}},
    'preprocess_cfg': {'mean': [0.48145466, 0.4578275, 0.40821073], 'std': [0.26862954, 0.26130258, 0.27577711]},
}
state = torch.load(bin_path) if os.path.exists(bin_path) else {}
embed = cfg['model_cfg']['embed_dim']

if variant == 'clip':
    vocab = len(json.load(open(os.path.join(out, 'vocab.json'))))
    shape = dict(kind='clip', vocabSize=vocab, contextLength=77, width=32, heads=4, layers=2, embedDim=embed, quickGelu=True)
    cfg['model_cfg']['quick_gelu'] = True
    cfg['model_cfg']['text_cfg'] = {'context_length': 77, 'vocab_size': vocab, 'width': 32, 'heads': 4, 'layers': 2}
    model = ClipText(shape)
    pad = 0
else:
    vocab = len([t for t in open(os.path.join(out, 'vocab.txt'), encoding='utf-8').read().split('\n') if t])
    shape = dict(kind='bert', vocabSize=vocab, contextLength=256, maxPositions=300, typeVocabSize=2, width=48, heads=4, layers=2,
                 intermediate=96, eps=1e-12, padId=0, embedDim=embed, pooler='cls_pooler', proj='mlp')
    cfg['model_cfg']['text_cfg'] = {
        'hf_model_name': 'microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract',
        'hf_tokenizer_name': 'microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract',
        'proj': 'mlp', 'pooler_type': 'cls_last_hidden_state_pooler', 'context_length': 256,
    }
    json.dump({'model_type': 'bert', 'hidden_size': 48, 'num_attention_heads': 4, 'num_hidden_layers': 2, 'intermediate_size': 96,
               'hidden_act': 'gelu', 'layer_norm_eps': 1e-12, 'pad_token_id': 0, 'max_position_embeddings': 300, 'vocab_size': vocab},
              open(os.path.join(out, 'config.json'), 'w'))
    model = Text(shape)  # built with the pooler (as old open_clip did); read out at [CLS] below
    shape['pooler'] = 'cls_last_hidden_state_pooler'
    model.text.s = shape
    pad = 0

with torch.no_grad():
    for p in model.parameters():  # far from any initialisation, so every tensor matters
        p.normal_(0, 0.3) if p.dim() > 1 else p.uniform_(0.5, 1.5)
text_state = model.state_dict()
if variant == 'biomedclip':
    text_state['text.transformer.embeddings.position_ids'] = torch.arange(300).unsqueeze(0)
state.update(text_state)
torch.save(state, bin_path)
json.dump(cfg, open(cfg_path, 'w'))

ids = json.load(open(ids_file))
ctx = shape['contextLength']
rows = torch.tensor([r + [pad] * (ctx - len(r)) for r in ids.values()], dtype=torch.long)
model.eval()
with torch.no_grad():
    e = torch.nn.functional.normalize(model(rows), dim=-1)
print(json.dumps({p: v for p, v in zip(ids, e.tolist())}))
