"""What a worker loads once and shares between its studies: networks, scorers, decoders.

A study records its files by this node's launcher's paths and by sha256; `NodePaths` gives a node
its own paths to the same files (a shared file system mounted elsewhere). A file whose content
differs from the study's is refused before the worker claims anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from ..errors import StudyError
from ..prompts import Prompts, read_prompts
from ..recipe import SamplingRecipe
from ..scoring import ProxyFID, make_scorer
from ..target import Target, load_target, source_sha256
from ._config import StudyConfig

__all__ = ["NodePaths", "Resources"]


@dataclass(frozen=True)
class NodePaths:
    """This node's own paths to a study's files; None: the path the study recorded."""

    checkpoint: str | None = None
    reference: str | None = None
    features_weights: str | None = None
    artifacts: str | None = None
    guide: str | None = None
    vae: str | None = None
    prompts: str | None = None

    _OPTIONS = {"checkpoint": "--checkpoint", "reference": "--ref", "features_weights": "--features-weights",
                "artifacts": "--artifacts", "guide": "--guide", "vae": "--vae", "prompts": "--prompts"}

    def args(self) -> list[str]:
        """The same paths as `skipsearch worker` options, for a worker process of this node."""
        out: list[str] = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out += [self._OPTIONS[f.name], str(value)]
        return out

    def resolve(self, config: StudyConfig) -> StudyConfig:
        """The study's config with this node's paths in place of the recorded ones."""
        given = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
        return config.with_overrides(**given)


@dataclass
class Resources:
    """Networks and scorers loaded once per worker, keyed by what they are made from."""

    device: str
    node: NodePaths = field(default_factory=NodePaths)
    compile: bool = False
    targets: dict[tuple[str, object], Target] = field(default_factory=dict)
    scorers: dict[tuple[str, str, str], ProxyFID] = field(default_factory=dict)
    decoders: dict[tuple[str, str | None, int], object] = field(default_factory=dict)

    def _load(self, source: str, sha256: str, what: str, option: str, study: str,
              prompts: Prompts | None = None) -> Target:
        key = (source, prompts.key if prompts is not None else None)
        if key not in self.targets:
            if sha256 and source_sha256(source) != sha256:
                raise StudyError(f"{what} {source} differs from study {study!r}'s (sha256 mismatch); "
                                 f"give this worker the same file with {option}")
            self.targets[key] = load_target(source, self.device, prompts)  # a pipeline embeds its prompts once
            if self.compile:
                self.targets[key].compile()
        return self.targets[key]

    def prompts(self, config: StudyConfig) -> Prompts | None:
        """The study's prompt set, read from this node's copy of its file (same content or refused)."""
        here = self.node.resolve(config)
        if not here.prompts:
            return None
        prompts = read_prompts(here.prompts, config.negative_prompt)
        if config.prompts_sha256 and prompts.sha256 != config.prompts_sha256:
            raise StudyError(f"prompts file {here.prompts} differs from study {config.study_name!r}'s (sha256 mismatch); "
                             "give this worker the same file with --prompts")
        return prompts

    def target(self, config: StudyConfig, expected_sites: int | None) -> Target:
        here = self.node.resolve(config)
        target = self._load(here.checkpoint, config.checkpoint_sha256, "checkpoint", "--checkpoint", config.study_name,
                            self.prompts(config))
        if expected_sites is not None and expected_sites != len(target.sites):
            raise StudyError(f"study {config.study_name!r} expects {expected_sites} skip sites, "
                             f"this network has {len(target.sites)}")
        return target

    def guide(self, config: StudyConfig) -> Target | None:
        here = self.node.resolve(config)
        if not here.guide:
            return None
        return self._load(here.guide, config.guide_sha256, "guiding network", "--guide", config.study_name)

    def scorer(self, config: StudyConfig, target: Target) -> ProxyFID:
        here = self.node.resolve(config)
        key = (target.source, config.features, str(here.reference))
        if key not in self.scorers:
            scorer = make_scorer(target.net, config.features, here.reference, device=self.device,
                                 features_weights=here.features_weights, report=config.report_features)
            if config.reference_sha256 and scorer.reference.sha256 != config.reference_sha256:
                raise StudyError(f"reference {here.reference} differs from study {config.study_name!r}'s (sha256 "
                                 "mismatch); give this worker the same file with --ref")
            self.scorers[key] = scorer
        return self.scorers[key]

    def recipe(self, config: StudyConfig, target: Target) -> SamplingRecipe:
        """The study's recipe as this worker runs it: precision resolved for its device, the guide
        and the decoder (a latent network's VAE) attached."""
        here = self.node.resolve(config)
        key = (target.source, here.vae, id(target))
        if key not in self.decoders:
            self.decoders[key] = target.decoder(here.vae, self.device)
        guide = self.guide(config)
        recipe = config.recipe().with_(precision=target.precision(config.precision, self.device))
        return recipe.with_networks(guide=guide.net if guide is not None else None,
                                    decode=self.decoders[key])  # type: ignore[arg-type]

    def artifacts(self, config: StudyConfig) -> str:
        return self.node.resolve(config).artifacts
