"""Why the 3D network's backward pass is slow at layer4: oneDNN's weight gradient at 2^3 maps.

    python docs/results/cpu_maxpool/conv_tiny.py      # conv_tiny.txt

Times (ms, 20 calls after one) one 256 -> 256 channel 3^3 convolution of layer4 at the strong model's
2^3 map (batch 16; ``experiment=cpu_paper``) forward, its input and weight gradients apart, the same
without oneDNN, and the weight gradient as an im2col matrix product (exact math, other rounding: the
maximum difference is printed); then layer1's 32-channel convolution at 12^3 for comparison.
"""
import torch, time
def t(f, n=20):
    f(); s=time.perf_counter()
    for _ in range(n): f()
    return (time.perf_counter()-s)/n*1e3
x = torch.randn(16,256,2,2,2); w = torch.randn(256,256,3,3,3)*0.01; g = torch.randn(16,256,2,2,2)
cb = torch.ops.aten.convolution_backward
args = lambda m: cb(g, x, w, None, [1,1,1],[1,1,1],[1,1,1], False, [0,0,0], 1, m)
print("fwd", t(lambda: torch.nn.functional.conv3d(x,w,padding=1)))
print("bwd input only", t(lambda: args([True,False,False])))
print("bwd weight only", t(lambda: args([False,True,False])))
print("bwd both", t(lambda: args([True,True,False])))
with torch.backends.mkldnn.flags(enabled=False):
    print("no-mkldnn fwd", t(lambda: torch.nn.functional.conv3d(x,w,padding=1)), "bwd both", t(lambda: args([True,True,False])))
# exact-math alternative for weight grad: unfold
def wgrad_unfold():
    xp = torch.nn.functional.pad(x,(1,1,1,1,1,1))
    cols = xp.unfold(2,3,1).unfold(3,3,1).unfold(4,3,1)  # 16,256,2,2,2,3,3,3
    cols = cols.permute(1,5,6,7,0,2,3,4).reshape(256*27, -1)
    return (g.permute(1,0,2,3,4).reshape(256,-1) @ cols.T).reshape(256,256,3,3,3)
ref = args([False,True,False])[1]
print("unfold wgrad", t(wgrad_unfold), (wgrad_unfold()-ref).abs().max().item())
x2 = torch.randn(16,32,12,12,12); w2 = torch.randn(32,32,3,3,3)*0.01; g2=torch.randn(16,32,12,12,12)
print("32@12 fwd", t(lambda: torch.nn.functional.conv3d(x2,w2,padding=1)), "bwd in", t(lambda: cb(g2,x2,w2,None,[1]*3,[1]*3,[1]*3,False,[0]*3,1,[True,False,False])), "bwd w", t(lambda: cb(g2,x2,w2,None,[1]*3,[1]*3,[1]*3,False,[0]*3,1,[False,True,False])))
