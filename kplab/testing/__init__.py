"""Test machinery that ships with kplab: the throwaway VM for kernels without IPVS (`vm`) and
the pytest plugin that routes `ipvs`-marked tests into it (`pytest_plugin`), and the host's
snapshot that proves a lab leaves the root namespace as found (`host`)."""
