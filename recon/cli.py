"""The ``recon`` command line: train, eval, render, export (tyro builds each from a dataclass)."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch
import tyro

from recon.train.config import METHODS, load_config_file, validate

USAGE = """usage: recon {train,eval,render,relight,export} ...

  recon train [gaussians|gaussians-pbr|mesh|mesh-pbr|sdf-pbr|triplane|sdf] [--config PRESET.yaml] [--resume RUN] [--data DIR] [options]
  recon train mesh|mesh-pbr --init-from FIELD_RUN [options]     (refine the surface of a triplane / sdf run)
  recon eval RUN | --scene FILE --data DIR
  recon render RUN [--split test] [--path test|orbit] [--channels rgb,depth,alpha] [--out DIR]
  recon render --scene FILE.{ply,obj,glb} --data DIR [--split test] [--out DIR]
  recon relight RUN | --scene FILE.glb --data DIR  --envmap FILE.{hdr,exr} [--rotate DEG] [--out DIR]
  recon export RUN --format ply|obj|glb|hdr|exr --out FILE

Run `recon <command> --help` for every option with its default."""


@dataclass
class SourceArgs:
    """Where the scene comes from: a run directory, or a scene file with a dataset."""

    run: tyro.conf.Positional[Path | None] = None
    """Run directory written by `recon train`."""
    scene: Path | None = None
    """A scene file instead of a run: a standard 3DGS .ply, or a triangle mesh (.obj, .ply with faces, .glb)."""
    data: Path | None = None
    """Dataset for the cameras (default: the run's dataset)."""
    data_format: Literal["auto", "blender", "ngp", "colmap"] = "auto"
    """Dataset format when --data is given."""
    downscale: int | None = None
    """Downscale factor (default: the run's)."""
    background: Literal["auto", "white", "black"] = "auto"
    """Background for RGBA datasets."""
    backend: Literal["auto", "torch", "cpu", "gsplat", "nvdiffrast"] = "auto"
    """Rasterizer backend (gsplat: Gaussians on CUDA; nvdiffrast: meshes on CUDA)."""
    field_method: Literal["volume", "sphere"] = "volume"
    """How neural SDF runs are rendered: "volume" (NeuS volume rendering, as trained) or "sphere" (sphere tracing
    of the zero set: exact surface hits and normals, opaque)."""
    gaussians_method: Literal["auto", "raster", "raycast"] = "auto"
    """How Gaussian scenes are rendered (settings.gaussians.method): "raster", or "raycast" (the Gaussian ray
    caster: any camera model, e.g. fisheye / OpenCV distortion kept with --distortion keep at training);
    "auto": the run's training method (``render_method``), raster for scene files."""
    device: str = "auto"
    """Torch device."""
    integrator: Literal["auto", "splitsum", "mc"] = "auto"
    """Shading of relightable scenes: "splitsum" (fast, no shadows), "mc" (Monte Carlo with shadow rays);
    "auto": mc for relight and for runs whose training explained self-shadowing (mesh-pbr's shadow_samples or
    mc_steps, as their own evaluation does), splitsum otherwise."""
    spp: int | None = None
    """Monte Carlo samples per sub-pixel and strategy (light, BRDF). Default: for `recon eval` of a PBR run, what
    the run's own final evaluation used (mesh-pbr: 16 // eval_supersample^2 for novel views, `relight_spp` for
    relit views; unchanged by --supersample); 64 otherwise."""
    supersample: int | None = None
    """Shade N x N sub-pixel samples per pixel (anti-aliasing like a path tracer's pixel filter). Default: for
    `recon eval` of a PBR run, the run's `eval_supersample`; 1 otherwise."""
    indirect: Literal["auto", "on", "off"] = "auto"
    """Monte Carlo: one bounce of indirect light (interreflections; slower). "auto": on for `recon relight` and
    for runs whose training modelled it (mesh-pbr's optim.interreflection, as their own evaluation does), off
    otherwise."""


@dataclass
class EvalArgs(SourceArgs):
    """Evaluate a trained run (or a scene file) on the test split; prints and writes eval.json."""

    out: Path | None = None
    """Where to write eval.json (default: RUN/eval.json, or ./eval.json for a scene file)."""


@dataclass
class RenderArgs(SourceArgs):
    """Render frames from dataset cameras or an orbit."""

    split: Literal["test", "train"] = "test"
    """Dataset split whose cameras are rendered (with --path test)."""
    path: Literal["test", "orbit"] = "test"
    """Camera path: the split's cameras, or an orbit around the scene."""
    channels: str = "rgb"
    """Comma-separated outputs: rgb, depth (<name>_depth.npy, float32 camera z, 0 where empty), alpha,
    normal (meshes: <name>_normal.png, world-space shading normal encoded as (n + 1) / 2, and <name>_normal.npy
    float32 [H, W, 3], 0 on background), albedo (<name>_albedo.png, sRGB-encoded base color), roughness and
    metallic (<name>_roughness.png / _metallic.png, 8-bit linear)."""
    out: Path | None = None
    """Output folder (default: RUN/renders/<path>)."""
    frames: int = 60
    """Number of orbit frames."""
    fps: int = 30
    """Frames per second of the orbit mp4 (written when imageio-ffmpeg is installed)."""


@dataclass
class RelightArgs(RenderArgs):
    """Render a relightable scene (a PBR run, or a glTF/OBJ asset with its material) under another light."""

    envmap: Path | None = None
    """The new environment: an equirectangular linear HDR map (.hdr or .exr, 2:1), in the dataset's world frame
    (the direction convention of docs/inverse_rendering.md)."""
    rotate: float = 0.0
    """Rotate the environment about the world +Z axis by this many degrees."""
    scale: float = 1.0
    """Multiply the environment's radiance by this factor."""


@dataclass
class ExportArgs(SourceArgs):
    """Export a trained scene."""

    format: Literal["ply", "obj", "glb", "hdr", "exr"] = "ply"
    """File format: ply (Gaussians: the standard 3DGS layout; meshes: vertex colors), obj (+ .mtl with the PBR
    extension and PNG textures), glb (glTF 2.0 binary, metallic-roughness material); obj and glb are for meshes;
    hdr / exr write the learned environment light of a PBR run (equirectangular, linear)."""
    out: Path | None = None
    """Output file (default: RUN/exports/scene.<format>)."""
    resolution: int = 512
    """Fields (tri-plane, SDF) only: marching-cubes grid points per axis over the field's box."""
    level: float | None = None
    """Fields only: the iso-level (tri-plane: a density, default ln 2 over its sampling interval; SDF: 0)."""
    min_component: float = 0.05
    """Fields only: keep connected components with at least this fraction of the largest one's faces."""
    texture_size: int = 0
    """Fields only: bake the colors into a base-color texture of this size (xatlas); 0 keeps vertex colors."""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    commands = {"train": cmd_train, "eval": cmd_eval, "render": cmd_render, "relight": cmd_relight,
                "export": cmd_export}
    if argv[0] not in commands:
        print(f"recon: unknown command {argv[0]!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    from recon._runtime import keep_freed_memory

    keep_freed_memory()  # freed tensors stay in the heap: no page faults per step (recon/_runtime.py)
    try:
        return commands[argv[0]](argv[1:]) or 0
    except KeyboardInterrupt as err:
        return 128 + getattr(err, "signum", 2)
    except (ValueError, FileNotFoundError, TypeError) as err:
        print(f"recon: error: {err}", file=sys.stderr)
        return 1
    except RuntimeError as err:
        if type(err).__name__ == "TrainingError":
            print(f"recon: error: {err}", file=sys.stderr)
            return 1
        raise


def _pop_option(args: list[str], name: str) -> str | None:
    """Remove ``--name VALUE`` or ``--name=VALUE`` from args; return VALUE."""
    for i, a in enumerate(args):
        if a == name:
            if i + 1 >= len(args):
                raise ValueError(f"{name} needs a value")
            value = args[i + 1]
            del args[i : i + 2]
            return value
        if a.startswith(name + "="):
            del args[i]
            return a.split("=", 1)[1]
    return None


def cmd_train(args: list[str]) -> int:
    from recon.train.trainer import Trainer, default_run_dir

    method = "gaussians"
    if args and args[0] in METHODS:
        method = args.pop(0)
    config_file = _pop_option(args, "--config")
    resume = _pop_option(args, "--resume")
    init_from = _pop_option(args, "--init-from")
    default = METHODS[method]()
    if resume is not None and config_file is not None:
        raise ValueError("--resume RUN continues a run with its own config.yaml; it cannot be combined with --config")
    if resume is not None:
        method, default = load_config_file(Path(resume) / "config.yaml")
        default = replace(default, output=Path(resume))
    elif config_file is not None:
        method, default = load_config_file(Path(config_file))
    desc = (f"Train {method}. Also: --config PRESET.yaml loads a preset (configs/*.yaml) that the options below "
            "override; --resume RUN continues a run from its last checkpoint.")
    cfg = tyro.cli(METHODS[method], args=args, default=default, prog=f"recon train {method}", description=desc)
    validate(cfg)
    if resume is not None and Path(cfg.output).resolve() != Path(resume).resolve():
        raise ValueError(f"--resume {resume} continues that run in place; --output must not name another folder")
    from recon.train.trainer import resolve_data_path

    # Store an absolute dataset path so that eval/render/resume work from any directory.
    cfg = replace(cfg, data=resolve_data_path(cfg.data).resolve())
    cfg = _check_model_files(cfg, fresh=resume is None)
    run_dir = cfg.output or default_run_dir(method, cfg.data)
    if init_from is not None:
        cfg = _init_from_field(cfg, method, Path(init_from), Path(run_dir), resume is not None)
    trainer = Trainer(cfg, run_dir, resume=resume is not None)
    summary = trainer.train()
    print(f"recon: {run_dir}: test PSNR {summary['psnr']:.2f} dB, SSIM {summary['ssim']:.4f}, "
          f"{describe_scene(trainer.scene)}, {summary['train_seconds']:.0f} s training")
    print(f"recon: exported {summary['export']}")
    return 0


def _check_model_files(cfg, fresh: bool):
    """``model.init_mesh`` / ``model.envmap`` stored as absolute paths (eval, render and resume work from any
    directory); a fresh run reads the env map now rather than fail after its geometry stage."""
    model = getattr(cfg, "model", None)
    changes = {k: str(Path(getattr(model, k)).resolve()) for k in ("init_mesh", "envmap")
               if getattr(model, k, None) is not None}
    if not changes:
        return cfg
    envmap = changes.get("envmap")
    if envmap is not None and fresh:
        from recon.shading.envmap import read_envmap

        try:
            read_envmap(envmap)
        except FileNotFoundError as err:
            raise ValueError(f"config field 'model.envmap' must be an existing .hdr or .exr file, got "
                             f"{model.envmap!r}") from err
        except ValueError as err:
            raise ValueError(f"config field 'model.envmap': {err}") from err
    return replace(cfg, model=replace(model, **changes))


def _init_from_field(cfg, method: str, field_run: Path, run_dir: Path, resume: bool):
    """``recon train mesh --init-from RUN``: the field run's surface (marching cubes at 256^3, cleaned with its
    training cameras) written to ``run_dir/init/field_mesh.ply`` becomes ``model.init_mesh`` (no iso-surface
    stage)."""
    from recon.export.field_mesh import FieldMeshOptions, field_to_mesh
    from recon.export.mesh_io import save_mesh
    from recon.scenes.fields import is_field

    if method not in ("mesh", "mesh-pbr"):
        raise ValueError(f"--init-from RUN starts `recon train mesh` or `mesh-pbr` from a field run's surface, "
                         f"not {method}")
    if resume:
        raise ValueError("--init-from cannot be combined with --resume (the run already has its initial mesh)")
    field, data, _, _ = _load_source(SourceArgs(run=field_run), need_data=True)
    if not is_field(field):
        raise ValueError(f"--init-from {field_run}: not a tri-plane or SDF run ({describe_scene(field)})")
    mesh = field_to_mesh(field, FieldMeshOptions(resolution=256), data.train.cameras, source=str(field_run))
    (run_dir / "init").mkdir(parents=True, exist_ok=True)
    path = save_mesh(mesh, run_dir / "init" / "field_mesh.ply", "ply")
    print(f"recon train: initial mesh from {field_run}: {path} ({describe_scene(mesh)})")
    # absolute, as the dataset path: the run's config must work from any directory
    cfg = replace(cfg, model=replace(cfg.model, init_mesh=str(path.resolve())),
                  optim=replace(cfg.optim, geometry_steps=0))
    validate(cfg)
    return cfg


def _load_source(src: SourceArgs, need_data: bool):
    """-> (scene, data or None, run_dir or None, run config or None)."""
    from recon.data.load import load_dataset
    from recon.export.scenes import load_scene_file
    from recon.train.trainer import resolve_data_path

    if (src.run is None) == (src.scene is None):
        raise ValueError("give exactly one of RUN (a run directory) or --scene FILE")
    cfg = None
    if src.run is not None:
        _, cfg = load_config_file(Path(src.run) / "config.yaml")
        scene = load_run_scene(Path(src.run))
    else:
        scene = load_scene_file(src.scene)
    data = None
    if need_data:
        if src.data is None and cfg is None:
            raise ValueError("--scene needs --data DATASET for the cameras")
        path = resolve_data_path(src.data if src.data is not None else cfg.data)
        downscale = src.downscale if src.downscale is not None else (cfg.downscale if cfg else 1)
        background = None if src.background == "auto" else src.background
        if background is None and cfg is not None and cfg.background != "auto":
            background = cfg.background
        data = load_dataset(path, format=src.data_format if src.data else (cfg.data_format if cfg else "auto"),
                            downscale=downscale, test_every=cfg.test_every if cfg else 8,
                            skip_missing_images=cfg.skip_missing_images if cfg else False, background=background,
                            distortion=cfg.distortion if cfg else "undistort")
    from recon.train.trainer import resolve_device

    return scene.to(resolve_device(src.device)), data, (Path(src.run) if src.run else None), cfg


def describe_scene(scene) -> str:
    """"N Gaussians", "V vertices, F faces" or the field's size."""
    from recon.scenes.lit import LitScene
    from recon.scenes.mesh import MeshScene

    if isinstance(scene, LitScene):
        h, w = scene.light.log_radiance.shape[:2]
        return f"{describe_scene(scene.geometry)}, a {w}x{h} environment light"
    if isinstance(scene, MeshScene):
        return f"{scene.vertices.shape[0]} vertices, {scene.faces.shape[0]} faces"
    from recon.scenes.fields import is_field

    if is_field(scene):
        what = "tri-plane field" if type(scene).__name__ == "TriPlaneField" else "neural SDF"
        return (f"a {what} of {scene.num_params / 1e6:.1f} M parameters "
                f"(planes {'/'.join(str(r) for r in scene.resolutions)})")
    return f"{len(scene)} Gaussians"


def scene_device(scene) -> torch.device:
    """The device of a scene's tensors."""
    for t in (*scene.parameters(), *scene.buffers()):
        return t.device
    return torch.device("cpu")


def load_run_scene(run_dir: Path):
    """The scene of a run: its latest checkpoint, else its export (exports/scene.ply, mesh.glb or field.pt)."""
    from recon.export.scenes import load_scene_file
    from recon.scenes.gaussians import GaussianScene
    from recon.scenes.mesh import MeshScene
    from recon.train.checkpoint import latest_checkpoint, load_checkpoint

    ckpt = latest_checkpoint(run_dir)
    if ckpt is not None:
        state = load_checkpoint(ckpt)
        if "scene" not in state:
            raise ValueError(f"{ckpt}: not a recon checkpoint (no 'scene' entry)")
        if _state_kind(state["scene"]) == "mesh":
            return MeshScene.from_state(state["scene"], source=str(ckpt))
        if _state_kind(state["scene"]) == "lit":
            from recon.scenes.lit import LitScene

            return LitScene.from_state(state["scene"], source=str(ckpt))
        if _state_kind(state["scene"]) in ("triplane", "sdf"):
            from recon.scenes.fields import field_from_state

            return field_from_state(state["scene"], source=str(ckpt))
        return GaussianScene.from_state(state["scene"], source=str(ckpt))
    for name in ("scene.ply", "mesh.glb"):
        if (run_dir / "exports" / name).is_file():
            return load_scene_file(run_dir / "exports" / name)
    field = run_dir / "exports" / "field.pt"
    if field.is_file():
        from recon.scenes.fields import load_field_file

        return load_field_file(field)
    raise FileNotFoundError(f"{run_dir}: no checkpoint in checkpoints/ and no exports/scene.ply, mesh.glb or "
                            "field.pt")


def _state_kind(state) -> str | None:
    """The ``kind`` in a scene state's JSON header (None when it has none)."""
    try:
        return json.loads(state["header"]).get("kind")
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def _run_integrator(cfg) -> str:
    """The integrator a run's own evaluation shades with: mc when training explained self-shadowing."""
    from recon.train.mesh_pbr import explains_shadows

    return "mc" if cfg is not None and explains_shadows(cfg) else "splitsum"


def _shading_overrides(src: SourceArgs) -> dict:
    """The shading options given on the command line (the others keep their defaults)."""
    if (src.spp is not None and src.spp < 1) or (src.supersample is not None and src.supersample < 1):
        raise ValueError(f"--spp and --supersample must be >= 1, got {src.spp} and {src.supersample}")
    given = {"spp": src.spp, "supersample": src.supersample,
             "integrator": None if src.integrator == "auto" else src.integrator,
             "indirect": None if src.indirect == "auto" else src.indirect == "on"}
    return {k: v for k, v in given.items() if v is not None}


def _evaluation_plan(cfg) -> tuple | None:
    """A PBR run's own evaluation settings (novel views' shading, relit views' keyword arguments), else None."""
    from recon.train.config import GaussianPBRTrainConfig, MeshPBRTrainConfig

    if isinstance(cfg, MeshPBRTrainConfig):  # sdf-pbr's config derives from it
        from recon.train.mesh_pbr import evaluation_plan
    elif isinstance(cfg, GaussianPBRTrainConfig):
        from recon.train.gaussians_pbr import evaluation_plan
    else:
        return None
    return evaluation_plan(cfg)


def _settings(src: SourceArgs, background: torch.Tensor, integrator: str = "splitsum", cfg=None,
              relight: bool = False, scene=None):
    from recon.renderers import RenderSettings, ShadingSettings
    from recon.train.mesh_pbr import explains_interreflection

    from recon.scenes.gaussians_pbr import PBRGaussianScene

    # The indirect bounce needs surface hits (meshes); relightable Gaussians trace shadow rays only.
    bounces = not isinstance(getattr(scene, "geometry", None), PBRGaussianScene)
    indirect = src.indirect == "on" or (src.indirect == "auto" and bounces and (
        relight or (cfg is not None and explains_interreflection(cfg))))
    shading = ShadingSettings(integrator=integrator, spp=64, supersample=1, indirect=indirect)
    shading = replace(shading, **_shading_overrides(src))
    from recon.renderers import GaussianSettings

    method = src.gaussians_method
    if method == "auto":
        method = getattr(cfg, "render_method", "raster") if cfg is not None else "raster"
    from recon.renderers import FieldSettings

    return RenderSettings(background=background, backend=src.backend, shading=shading,
                          gaussians=GaussianSettings(method=method), fields=FieldSettings(method=src.field_method))


def cmd_eval(args: list[str]) -> int:
    from recon.evaluate import evaluate_split
    from recon.train.checkpoint import atomic_write_text, latest_checkpoint, load_checkpoint

    a = tyro.cli(EvalArgs, args=args, prog="recon eval")
    scene, data, run_dir, cfg = _load_source(a, need_data=True)
    bg = torch.tensor(data.background, dtype=torch.float32, device=scene_device(scene))
    from recon.evaluate import alpha_is_mask

    settings = _settings(a, bg, _run_integrator(cfg), cfg)
    # A PBR run is evaluated as its training's final evaluation did, unless options say otherwise.
    plan = _evaluation_plan(cfg)
    if plan is not None:
        settings = replace(settings, shading=replace(plan[0], **_shading_overrides(a)))
    relit_options = {**(plan[1] if plan is not None else {"spp": 64, "supersample": 1}), **_shading_overrides(a)}
    summary = evaluate_split(scene, data.test, bg, settings,
                             mask=alpha_is_mask(cfg.alpha_mode if cfg else "auto", data.format))
    from recon.scenes.lit import LitScene

    if isinstance(scene, LitScene):
        from recon.evaluate_pbr import evaluate_inverse_rendering

        ir = evaluate_inverse_rendering(scene, data, bg, downscale=a.downscale or (cfg.downscale if cfg else 1),
                                        **relit_options)
        if ir is not None:
            summary["inverse_rendering"] = ir
            print("recon eval: " + ", ".join(f"{k} {ir[k]}" for k in ("albedo_psnr", "roughness_mae",
                                                                        "normal_mae_deg", "relight_psnr") if k in ir))
    train_seconds = None
    if run_dir is not None and latest_checkpoint(run_dir) is not None:
        train_seconds = load_checkpoint(latest_checkpoint(run_dir)).get("train_seconds")
    from recon.scenes.mesh import MeshScene

    from recon.scenes.lit import LitScene

    from recon.scenes.fields import is_field

    geom = scene.geometry if isinstance(scene, LitScene) else scene
    if isinstance(geom, MeshScene):
        size = {"num_faces": geom.num_faces}
    elif is_field(geom):
        size = {"num_params": geom.num_params}
    else:
        size = {"num_gaussians": len(geom)}
    summary.update(**size, train_seconds=train_seconds)
    for v in summary["views"]:
        print(f"  {v['name']:>20s}  PSNR {v['psnr']:6.2f}  SSIM {v['ssim']:.4f}")
    print(f"recon eval: mean PSNR {summary['psnr']:.2f} dB, SSIM {summary['ssim']:.4f} over {len(summary['views'])} "
          f"views, {describe_scene(scene)}")
    out = a.out or ((run_dir / "eval.json") if run_dir else Path("eval.json"))
    atomic_write_text(out, json.dumps(summary, indent=1))
    print(f"recon eval: wrote {out}")
    return 0


def orbit_cameras(cameras, frames: int):
    """``frames`` cameras on a circle around the look-at center, at the mean height/distance of ``cameras``,
    keeping the first camera's intrinsics. The orbit axis is the mean camera up vector."""
    from recon.cameras import Cameras
    from recon.train.init import look_at_center

    center = look_at_center(cameras).double()
    c2w = cameras.cam_to_world().double()
    up = -c2w[:, :3, 1].mean(0)
    up = up / up.norm()
    offsets = c2w[:, :3, 3] - center
    height = (offsets @ up).mean()
    radial = offsets - (offsets @ up)[:, None] * up
    radius = radial.norm(dim=-1).mean()
    e1 = radial[0] / radial[0].norm()
    e2 = torch.cross(up, e1, dim=0)
    w2cs = []
    for t in torch.linspace(0, 2 * math.pi, frames + 1, dtype=torch.float64)[:-1]:
        eye = center + height * up + radius * (torch.cos(t) * e1 + torch.sin(t) * e2)
        fwd = (center - eye) / (center - eye).norm()
        right = torch.cross(fwd, up, dim=0)
        right = right / right.norm()
        down = torch.cross(fwd, right, dim=0)
        m = torch.eye(4, dtype=torch.float64)
        m[:3, :3] = torch.stack([right, down, fwd], dim=1)
        m[:3, 3] = eye
        w2cs.append(torch.linalg.inv(m))
    K = cameras.K[:1].double().expand(frames, 3, 3)
    return Cameras(torch.stack(w2cs).float(), K.float(), cameras.width, cameras.height)


CHANNELS = ("rgb", "depth", "alpha", "normal", "albedo", "roughness", "metallic")


def _parse_channels(text: str) -> list[str]:
    channels = [c.strip() for c in text.split(",") if c.strip()]
    bad = sorted(set(channels) - set(CHANNELS))
    if bad or not channels:
        raise ValueError(f"--channels takes a comma-separated subset of {','.join(CHANNELS)}; got {text!r}")
    return channels


def _camera_path(a: RenderArgs, data):
    split = data.test if a.split == "test" else data.train
    if a.path == "test":
        return split.cameras, list(split.names)
    return orbit_cameras(data.train.cameras, a.frames), [f"orbit_{i:04d}" for i in range(a.frames)]


def _write_frames(scene, cams, names: list[str], settings, channels: list[str], out_dir: Path) -> list:
    """Render every camera and write the asked channels (see RenderArgs.channels); returns the 8-bit RGB frames."""
    import numpy as np

    from recon.color import linear_to_srgb
    from recon.data.io import write_png
    from recon.renderers import render

    out_dir.mkdir(parents=True, exist_ok=True)
    device = scene_device(scene)
    # rgb and alpha always (the frames feed the orbit video); the rest only when asked: each extra channel costs an
    # interpolation, and with --supersample a pixel-center pass of its own.
    extra = tuple(c for c in ("depth", "normal", "albedo", "roughness", "metallic") if c in channels)
    settings = replace(settings, channels=("rgb", "alpha", *extra))
    frames = []
    with torch.no_grad():
        for i, name in enumerate(names):
            out = render(scene, cams[i].to(device), settings)
            rgb = out.rgb[0].clamp(0, 1).cpu().numpy()
            if "rgb" in channels:
                write_png(out_dir / f"{name}.png", rgb)
            if "depth" in channels:
                np.save(out_dir / f"{name}_depth.npy", out.depth[0, ..., 0].cpu().numpy().astype(np.float32))
            if "alpha" in channels:
                write_png(out_dir / f"{name}_alpha.png", out.alpha[0].expand(-1, -1, 3).cpu().numpy())
            if "normal" in channels:
                if out.normal is None:
                    raise ValueError("--channels normal: this scene type renders no normals")
                normal = out.normal[0].cpu().numpy().astype(np.float32)
                write_png(out_dir / f"{name}_normal.png", (normal + 1) / 2)
                np.save(out_dir / f"{name}_normal.npy", normal)
            for key in ("albedo", "roughness", "metallic"):
                if key not in channels:
                    continue
                if key not in out.gbuffer:
                    raise ValueError(f"--channels {key}: this scene has no {key} (not a relightable scene)")
                value = out.gbuffer[key][0].clamp(0, 1)
                value = linear_to_srgb(value) if key == "albedo" else value.expand(-1, -1, 3)
                write_png(out_dir / f"{name}_{key}.png", value.cpu().numpy())
            frames.append((rgb * 255 + 0.5).astype(np.uint8))
    return frames


def cmd_render(args: list[str]) -> int:
    a = tyro.cli(RenderArgs, args=args, prog="recon render")
    if a.frames < 1 or a.fps < 1:
        raise ValueError(f"--frames and --fps must be >= 1, got {a.frames} and {a.fps}")
    channels = _parse_channels(a.channels)
    scene, data, run_dir, cfg = _load_source(a, need_data=True)
    cams, names = _camera_path(a, data)
    out_dir = a.out or ((run_dir / "renders" / a.path) if run_dir else Path("renders") / a.path)
    bg = torch.tensor(data.background, dtype=torch.float32, device=scene_device(scene))
    frames = _write_frames(scene, cams, names, _settings(a, bg, _run_integrator(cfg), cfg), channels, out_dir)
    print(f"recon render: wrote {len(names)} frames to {out_dir}")
    if a.path == "orbit":
        _write_video(out_dir / "orbit.mp4", frames, a.fps)
    return 0


def relightable(scene, envmap: Path, rotate: float = 0.0, scale: float = 1.0, source: str | None = None):
    """``scene`` under the light of ``envmap`` (a LitScene). ``ValueError`` (naming ``source``, the run or file
    the scene came from) for a scene without a PBR material."""
    from recon.scenes.lit import LitScene, has_material
    from recon.shading.envmap import EnvLight

    geometry = scene.geometry if isinstance(scene, LitScene) else scene
    if not has_material(geometry):
        where = f"{source}: " if source else ""
        raise ValueError(f"{where}cannot relight a {type(geometry).__name__}: it has no PBR material (base color, "
                         "roughness, metallic; a 3DGS PLY needs base_color_0..2, roughness, metallic); relight a "
                         "mesh asset or a run of a PBR method (mesh-pbr, gaussians-pbr)")
    if not (math.isfinite(rotate) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"--rotate must be finite and --scale > 0, got {rotate} and {scale}")
    light = EnvLight.from_file(envmap, rotation_deg=rotate)
    if scale != 1.0:
        light = EnvLight(light.radiance().detach() * scale, rotation_deg=rotate)
    return LitScene(geometry, light.to(scene_device(scene)))


def cmd_relight(args: list[str]) -> int:
    a = tyro.cli(RelightArgs, args=args, prog="recon relight")
    if a.envmap is None:
        raise ValueError("recon relight needs --envmap FILE.hdr|.exr (a 2:1 equirectangular linear HDR map)")
    if a.frames < 1 or a.fps < 1:
        raise ValueError(f"--frames and --fps must be >= 1, got {a.frames} and {a.fps}")
    channels = _parse_channels(a.channels)
    scene, data, run_dir, cfg = _load_source(a, need_data=True)
    scene = relightable(scene, a.envmap, a.rotate, a.scale, source=str(a.scene or a.run))
    cams, names = _camera_path(a, data)
    out_dir = a.out or ((run_dir / "relight" / a.envmap.stem) if run_dir else Path("relight") / a.envmap.stem)
    bg = torch.tensor(data.background, dtype=torch.float32, device=scene_device(scene))
    from recon.evaluate_pbr import relight_integrator

    settings = _settings(a, bg, integrator=relight_integrator(scene), cfg=cfg, relight=True, scene=scene)
    frames = _write_frames(scene, cams, names, settings, channels, out_dir)
    print(f"recon relight: wrote {len(names)} frames under {a.envmap} to {out_dir}")
    if a.path == "orbit":
        _write_video(out_dir / "orbit.mp4", frames, a.fps)
    return 0


def _write_video(path: Path, frames: list, fps: int) -> None:
    try:
        import imageio.v2 as imageio
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        print("recon render: imageio-ffmpeg is not installed (pip install 'recon[video]'); frames only")
        return
    even = [f[: f.shape[0] // 2 * 2, : f.shape[1] // 2 * 2] for f in frames]
    imageio.mimwrite(path, even, fps=fps, macro_block_size=1)
    print(f"recon render: wrote {path}")


def _field_mesh(a: ExportArgs, field, run_dir: Path | None):
    """The mesh export of a field run: marching cubes, cleaned with the run's training cameras when its dataset
    is at hand (``--data`` for a field file)."""
    from recon.export.field_mesh import FieldMeshOptions, field_to_mesh

    if a.format not in ("obj", "ply", "glb"):
        raise ValueError(f"a field exports as a mesh (obj, ply or glb), got --format {a.format}")
    opts = FieldMeshOptions(a.resolution, a.level, a.min_component, a.texture_size)
    cameras = None
    if run_dir is not None or a.data is not None:
        try:
            field, data, _, _ = _load_source(a, need_data=True)
            cameras = data.train.cameras
        except (FileNotFoundError, ValueError) as err:
            print(f"recon export: no training cameras ({str(err).splitlines()[0]}); unseen faces are kept")
    return field_to_mesh(field, opts, cameras, source=str(a.run or a.scene))


def cmd_export(args: list[str]) -> int:
    from recon.export.scenes import export_scene

    a = tyro.cli(ExportArgs, args=args, prog="recon export")
    scene, _, run_dir, _ = _load_source(a, need_data=False)
    out = a.out or ((run_dir / "exports" / f"scene.{a.format}") if run_dir else None)
    if out is None:
        raise ValueError("--out FILE is required when exporting a --scene file")
    from recon.scenes.fields import is_field

    if is_field(scene):
        scene = _field_mesh(a, scene, run_dir)
    export_scene(scene.cpu(), a.format, out)
    print(f"recon export: wrote {out} ({describe_scene(scene)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
