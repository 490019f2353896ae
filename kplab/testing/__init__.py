"""Test machinery that ships with kplab: the throwaway VM for kernels without IPVS (`vm`) and
the pytest plugin that routes `ipvs`-marked tests into it (`pytest_plugin`)."""
