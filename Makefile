# aiadmin-ops: every target installs what it needs first.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAGE := scripts/stage
export CONTAINERS_CONF := $(CURDIR)/containers.conf
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
LAB_VAULT := --vault-id lab@inventories/lab/vault-password.LAB-ONLY.txt

# Molecule scenarios (each: create, converge, idempotence, verify, destroy, some with check and
# side_effect), longest first. Those that reach a database use lab-db's molecule cluster
# (inventories/lab/group_vars/molecule.yml), never the main one the window tests watch.
SCENARIOS ?= backup app base nodejs xray pm2 xray_bad_config private_network pg_ca_cert_negative \
	private_network_negative
# Scenarios run side by side (each has its own instances).
MOLECULE_JOBS ?= 2

.PHONY: help deps venv lock lint unit lab-up lab-down lab-purge lab-status lab-smoke molecule molecule-run test demo window-tests dr-tests maintenance-tests ci-static ci-lab ci-stories ci-molecule clean

help: ## Show the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

deps: ## Install system packages (podman, runc, debootstrap, PostgreSQL, ...)
	@scripts/install-deps

# Every Python dependency from requirements.lock, each file checked against its sha256
# (--require-hashes), then this project itself without resolving anything further.
# Regenerate the lock after a change to pyproject.toml's dependencies: make lock.
$(VENV)/.installed: pyproject.toml requirements.lock
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install -q --require-hashes -r requirements.lock
	@$(PY) -m pip install -q --no-deps -e .
	@touch $@

lock: ## Regenerate requirements.lock (hashes) from pyproject.toml (needs pip-tools)
	@pip-compile -q --generate-hashes --extra test --strip-extras --allow-unsafe --no-emit-index-url \
		--no-emit-find-links -o requirements.lock pyproject.toml

venv: $(VENV)/.installed ## Create the Python virtualenv with the pinned tools

lint: venv ## yamllint, ansible-lint (production profile), ruff
	@$(BIN)/yamllint -s .
	@$(BIN)/ansible-lint --profile production -q
	@$(BIN)/ruff check .

unit: deps venv ## pytest without the lab (real PostgreSQL on loopback, namespaces)
	@$(BIN)/pytest -q -m 'not lab'

lab-up: deps venv ## Create or repair the lab (idempotent)
	@$(BIN)/aiadmin-ops lab up

lab-down: venv ## Remove the lab containers and networks (images kept)
	@$(BIN)/aiadmin-ops lab down

lab-purge: venv ## Remove the lab including its images
	@$(BIN)/aiadmin-ops lab down --purge-images

lab-status: venv ## Show what the lab has and whether it is healthy
	@$(BIN)/aiadmin-ops lab status

lab-smoke: lab-up ## Prove the lab's networks, TLS and systemd with real connections
	@$(BIN)/pytest -q -m 'lab and not window and not dr and not dr_db and not maintenance and not prepared' tests/lab

molecule: deps venv ## Every Molecule scenario (SCENARIOS="a b" to choose, MOLECULE_JOBS side by side)
	@$(BIN)/aiadmin-ops lab status >/dev/null || $(BIN)/aiadmin-ops lab up
	@$(MAKE) --no-print-directory molecule-run

molecule-run:
	@printf '%s\n' $(SCENARIOS) | xargs -P $(MOLECULE_JOBS) -I{} scripts/molecule-scenario {}

test: deps venv ## Everything CI runs: lint, pytest, the lab and its tests, the window, host recovery and maintenance on the lab, Molecule, database recovery
	@$(MAKE) --no-print-directory -j2 ci-static ci-lab
	@$(MAKE) --no-print-directory -j2 ci-stories ci-molecule
	@$(STAGE) dr-db-tests $(BIN)/pytest -q -m dr_db --durations=0

# Internal to `test`, side by side: what needs no lab (lint, pytest on loopback), and the lab
# made quiet (no app running, whatever `make demo` or a benchmark left: the gates' pool
# budgets), its tests, then the window story prepared (old provisioned, deployed and serving,
# new provisioned).
ci-static:
	@$(STAGE) lint $(MAKE) --no-print-directory lint
	@$(STAGE) pytest $(BIN)/pytest -q -m 'not lab'

ci-lab:
	@$(STAGE) lab-up $(BIN)/aiadmin-ops lab up
	@$(STAGE) lab-quiet $(BIN)/ansible-playbook $(LAB_VAULT) -i inventories/lab/hosts.yml lab/story-reset.yml -e lab_reset_start_old=false
	@$(STAGE) lab-tests $(BIN)/pytest -q -m 'lab and not window and not dr and not dr_db and not maintenance and not prepared'
	@DEMO_LAB_READY=1 $(STAGE) window-prepare scripts/demo --prepare

# Then, side by side: the stories on the lab's own hosts (over SSH and the Xray clients' TLS, the window,
# host recovery, maintenance),
# one after the other, and Molecule on its own instances and lab-db's molecule cluster, at the
# lowest CPU priority. A lab test keeps one core busy (its ansible-playbook process; the other
# about half idle, measured with vmstat); Molecule saturates both cores and, at equal priority,
# made the window tests 3.4 times as long. Niced (its instances' processes inherit it), it takes
# only what the stories leave. None of the stories stops lab-db, lab-egress or a lab network.
ci-stories:
	@$(STAGE) prepared-tests $(BIN)/pytest -q -m prepared --durations=0
	@AIADMIN_SKIP_PREPARE=1 $(STAGE) window-tests $(BIN)/pytest -q -m window --durations=0
	@$(STAGE) dr-tests $(BIN)/pytest -q -m dr --durations=0
	@$(STAGE) maintenance-tests $(BIN)/pytest -q -m maintenance --durations=0

ci-molecule:
	@nice -n 19 $(MAKE) --no-print-directory molecule-run

demo: deps venv ## The main job on the lab: lab up, old host serving, new host provisioned, the window, the report
	@scripts/demo

window-tests: deps venv ## The migration-window tests on the lab (prepares the story first)
	@$(BIN)/aiadmin-ops lab status >/dev/null || $(BIN)/aiadmin-ops lab up
	@$(BIN)/pytest -q -m window

dr-tests: deps venv ## The disaster-recovery tests on the lab (they destroy lab-new, then lab-db, and recover)
	@$(BIN)/aiadmin-ops lab status >/dev/null || $(BIN)/aiadmin-ops lab up
	@$(BIN)/pytest -q -m dr
	@$(BIN)/pytest -q -m dr_db

maintenance-tests: deps venv ## The maintenance jobs on the lab (aiadmin-ops maintain; prepares lab-new when it does not serve)
	@$(BIN)/aiadmin-ops lab status >/dev/null || $(BIN)/aiadmin-ops lab up
	@$(BIN)/pytest -q -m maintenance

clean: ## Remove local caches (not the lab)
	rm -rf .pytest_cache .ruff_cache
