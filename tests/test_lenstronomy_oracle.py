"""The forward model's image against lenstronomy's (an independent code) for the same lens: EPL + shear + m = 3, 4
multipoles lensing a Gaussian source, with an elliptical Sersic lens light, each code integrating its pixels over
4 x 4 sub-pixels; without a PSF and with a Gaussian one. Our source and lens light are pixelated images (bilinear
between pixel centres), lenstronomy's are analytic: fine pixels keep that difference below 5e-4 of the peak,
except on the Sersic cusp at the lens centre, where bilinear interpolation of the lens-light pixels loses 0.2% of
the peak. With a PSF, only pixels farther than the PSF's reach from the cutout's edge are compared: lenstronomy's
Gaussian PSF blurs across the edge as if the image continued (a boundary convention), ours takes no light from
outside the cutout.
"""

import numpy as np
import pytest
import torch

from scorelens.lensing.forward import ForwardModel
from scorelens.lensing.grid import ExposureGrid, PixelGrid

lenstronomy = pytest.importorskip("lenstronomy")

MASS = dict(theta_E=1.12, gamma=0.93, q=0.74, phi=0.6, x0=0.04, y0=-0.03, gamma_ext=0.05, phi_ext=-0.7, a3=0.008,
            phi3=0.3, a4=0.012, phi4=1.1)
N, SCALE, SS = 48, 0.05, 4              # detector pixels, arcsec per pixel, sub-pixels per side
SOURCE = dict(amp=40.0, sigma=0.12, center_x=0.07, center_y=0.02)   # GAUSSIAN: amp = total flux
LIGHT = dict(amp=3.0, R_sersic=0.6, n_sersic=2.5, e1=0.05, e2=-0.08, center_x=0.04, center_y=-0.03)


def lenstronomy_image(psf_sigma):
    from lenstronomy.Data.imaging_data import ImageData
    from lenstronomy.Data.psf import PSF
    from lenstronomy.ImSim.image_model import ImageModel
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.LightModel.light_model import LightModel

    from scorelens.data.simulate.lenstronomy_coadd import lenstronomy_mass

    # pixel (row i, col j) at x = (j - (N-1)/2) s, y = (i - (N-1)/2) s: ExposureGrid.regular's frame
    data = ImageData(image_data=np.zeros((N, N)), ra_at_xy_0=-(N - 1) / 2 * SCALE, dec_at_xy_0=-(N - 1) / 2 * SCALE,
                     transform_pix2angle=np.array([[SCALE, 0.0], [0.0, SCALE]]))
    psf = PSF(psf_type="NONE") if psf_sigma is None else PSF(psf_type="GAUSSIAN", fwhm=2.3548 * psf_sigma * SCALE,
                                                             truncation=6)
    models, kwargs = lenstronomy_mass(MASS)
    image = ImageModel(data, psf, lens_model_class=LensModel(models), source_model_class=LightModel(["GAUSSIAN"]),
                       lens_light_model_class=LightModel(["SERSIC_ELLIPSE"]),
                       kwargs_numerics={"supersampling_factor": SS, "supersampling_convolution": psf_sigma is not None})
    return image.image(kwargs, [SOURCE], [LIGHT])


def our_image(psf_sigma):
    from lenstronomy.LightModel.light_model import LightModel

    f64 = torch.float64
    grid = ExposureGrid.regular((N, N), SCALE, SS, n_exp=1, dtype=f64)
    src_grid, light_grid = PixelGrid(400, 0.004, 0.07, 0.02), PixelGrid(N * SS * 2, SCALE / SS / 2, 0.0, 0.0)
    fm = ForwardModel(grid, src_grid, light_grid)
    # surface brightness (flux per arcsec^2) at pixel centres, times a detector pixel's area: flux per detector pixel
    images = []
    for g, model, kw in ((src_grid, "GAUSSIAN", SOURCE), (light_grid, "SERSIC_ELLIPSE", LIGHT)):
        x, y = (c.numpy() for c in g.coordinates(f64))
        sb = LightModel([model]).surface_brightness(x.ravel(), y.ravel(), [kw]).reshape(x.shape)
        images.append(torch.as_tensor(sb * SCALE**2)[None])
    k = 4 * SS * (3 if psf_sigma else 0) + 1
    a = (torch.arange(k, dtype=f64) - k // 2) / SS
    psf = torch.exp(-0.5 * (a[:, None] ** 2 + a[None] ** 2) / (psf_sigma or 1.0) ** 2) if psf_sigma else \
        torch.ones(1, 1, dtype=f64)
    psf = (psf / psf.sum())[None, None]
    mass = {key: torch.tensor([v], dtype=f64) for key, v in MASS.items()}
    with torch.no_grad():
        return fm(mass, torch.zeros(1, 1, 2, dtype=f64), images[0], images[1], psf)[0, 0].numpy()


@pytest.mark.parametrize("psf_sigma", [None, 1.2])
def test_forward_model_renders_what_lenstronomy_renders(psf_sigma):
    ref, ours = lenstronomy_image(psf_sigma), our_image(psf_sigma)
    peak = ref.max()
    assert peak > 0.5 and ref[0].max() > 0.01 * peak  # lens light and arcs fill the cutout
    inside = np.s_[8:-8, 8:-8] if psf_sigma else np.s_[:, :]  # 8 pixels: beyond 6 sigma of the PSF
    cusp = np.zeros((N, N), bool)
    cusp[N // 2 - 3:N // 2 + 3, N // 2 - 3:N // 2 + 3] = True
    diff = np.abs(ours - ref)[inside] / peak
    assert diff[~cusp[inside]].max() < 5e-4
    assert diff[cusp[inside]].max() < 2.5e-3
    if psf_sigma is None:
        assert ours.sum() == pytest.approx(ref.sum(), rel=1e-4)
