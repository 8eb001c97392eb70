"""Serving on NVIDIA Triton Inference Server.

protocol.py    the `disca` model's input and output tensors (one place for server, repository, client)
requests.py    one request's tensors -> a checked ClipRequest, or an error naming the problem
batching.py    ClipRunner: a Triton batch of requests -> compatible sub-batches through Pipeline.generate
server.py      disca-serve: Triton in process through PyTriton (imported only when serving)
repository.py  disca-export triton: a model repository (config.pbtxt, model.py from triton_model.py, bundle)
"""
