"""How cnnkit's modules and checks look to torch.fx.

torch.fx's default tracer keeps torch.nn's own modules whole (one call_module node each) and
traces every other module's forward. Traced through, a cnnkit module's forward would run its
Python-side logic on Proxies: the argument checks (control flow on a Proxy raises TraceError)
and the training bookkeeping (num_batches_tracked, the momentum factor), which must run at
every call, not once at trace time. So while any tracer traces them, cnnkit's modules record
themselves as one call_module node, exactly as torch.nn's do, and the input checks record
themselves as one call_function node, so that the GraphModule still checks its input.
"""

import torch.fx


def _proxy_among(args, kwargs):
    return next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.fx.Proxy)), None)


def traced_module_call(module, *args, **kwargs):
    """While torch.fx traces ``module(*args, **kwargs)``: the Proxy of that call, recorded
    as one call_module node. Otherwise (eager, torch.compile, torch.export): None."""
    proxy = _proxy_among(args, kwargs)
    if proxy is None:
        return None
    tracer = proxy.tracer
    return tracer.create_proxy("call_module", tracer.path_of_module(module), args, kwargs)


def traced_function_call(function, *args, **kwargs):
    """While torch.fx traces ``function(*args, **kwargs)``: the Proxy of that call, recorded
    as one call_function node. Otherwise: None."""
    proxy = _proxy_among(args, kwargs)
    if proxy is None:
        return None
    return proxy.tracer.create_proxy("call_function", function, args, kwargs)
