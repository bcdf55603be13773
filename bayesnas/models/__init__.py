"""Models: candidate operations, genotypes, the fused search supernet, fixed networks.

This package never imports Pyro: parameters live in ordinary nn.Modules, and per-task
weights are substituted with ``torch.func.functional_call`` through :class:`ParamLayout`.
"""
from .conv4 import Conv4
from .derivation import ChosenEdge, chosen_edges_table, derive_genotype, format_edges_table
from .functional import ParamLayout, count_parameters
from .genotypes import (
                        BASELINES,
                        CELL_TITLES,
                        CELL_TYPES,
                        DARTS_V2,
                        EDGES,
                        NAMED_GENOTYPES,
                        NUM_EDGES,
                        STEPS,
                        Genotype,
                        arch_config,
                        arch_label,
                        cell_edges,
                        edge_index,
                        genotype_agreement,
                        genotype_from_dict,
                        genotype_string,
                        genotype_to_dict,
                        kept_choices,
                        load_genotype,
                        named_genotype,
                        num_edges,
                        random_agreement,
                        random_genotype,
                        save_genotype,
                        state_name,
                        validate_genotype,
)
from .macro import reduction_indices
from .network import FixedCell, NetworkFromGenotype, build_network
from .operations import (
                        NUM_OPS,
                        OPS,
                        Conv7x1_1x7,
                        DilConv,
                        FactorizedReduce,
                        ReLUConvBN,
                        SepConv,
                        Zero,
                        batch_norm,
                        make_op,
)
from .supernet import SOURCE_MAJOR, SearchCell, SearchNetwork, discrete_cells, edge_batches, source_major, sparse_edges

__all__ = [
    "OPS", "NUM_OPS", "make_op", "batch_norm", "Zero", "ReLUConvBN", "FactorizedReduce",
    "SepConv", "DilConv", "Conv7x1_1x7",
    "Genotype", "DARTS_V2", "NAMED_GENOTYPES", "STEPS", "EDGES", "NUM_EDGES", "cell_edges", "num_edges",
    "edge_index", "validate_genotype", "genotype_to_dict", "genotype_from_dict", "genotype_string",
    "save_genotype", "load_genotype", "random_genotype", "kept_choices", "genotype_agreement",
    "random_agreement", "named_genotype", "CELL_TYPES", "CELL_TITLES",
    "state_name", "BASELINES", "arch_config", "arch_label",
    "ChosenEdge", "chosen_edges_table", "derive_genotype", "format_edges_table",
    "reduction_indices",
    "SearchNetwork", "SearchCell", "SOURCE_MAJOR", "source_major", "edge_batches", "discrete_cells", "sparse_edges",
    "NetworkFromGenotype", "FixedCell", "Conv4", "build_network",
    "ParamLayout", "count_parameters",
]
