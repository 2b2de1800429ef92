import copy, torch, torchvision, resnet_ext, sys
torch.set_num_threads(2)
tv = torchvision.models.resnet50().eval()
m = resnet_ext.from_torchvision(copy.deepcopy(tv)).eval().to(memory_format=torch.channels_last)
resnet_ext.freeze(m, dtype=torch.bfloat16)
x = torch.randn(1, 3, 224, 224).contiguous(memory_format=torch.channels_last)
with torch.no_grad():
    for _ in range(5):
        m(x)
    torch.backends.mkldnn.verbose(1)
    with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
        for _ in range(3):
            m(x)
