# Claims are durable: the transaction that starts a run or claims one for a
# resume commits synchronously, so a crash right after it cannot undo it
# (resume_count must count every resume that started).  The WAL writer is
# slowed down so that an asynchronous commit would still sit in shared
# memory when the server goes down.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;

$ENV{PYTHON} ||= 'python3';
$ENV{MOCK_API_SCRIPT} ||= 'test/mock_api.py';

my $mock_port = 18700 + int(rand(500));
my $mock = IPC::Run::start([ $ENV{PYTHON}, $ENV{MOCK_API_SCRIPT}, '--port', $mock_port ],
	'>', \my $mock_out, '2>', \my $mock_err);
for (1 .. 50) { last if $mock_out =~ /listening/; $mock->pump_nb; select(undef, undef, undef, 0.1); }
like($mock_out, qr/listening/, 'mock API started');

my $node = PostgreSQL::Test::Cluster->new('claims');
$node->init;
$node->append_conf('postgresql.conf', "max_worker_processes = 8\nwal_writer_delay = 10s\n");
$node->start;
# every page takes 3 s: nothing but the claim writes WAL in the window below
$node->safe_psql('postgres', qq{
	CREATE EXTENSION etl_exec;
	CREATE TABLE patients (patientid int, name text);
	INSERT INTO dw_etl_jobs (job_id, name, url, target_table, page_size)
	VALUES (1, 'claims', 'http://127.0.0.1:$mock_port/odata/Patients?n=1000&delay_ms=3000', 'patients', 100);
});

# a new run: created, then the server goes down at once
my $run = $node->safe_psql('postgres', 'SELECT etl_execute_job(1, timeout := 1)');
$node->stop('immediate');
$node->start;
is($node->safe_psql('postgres', "SELECT count(*) FROM dw_etl_runs WHERE run_id = $run"), '1',
	'a run that started survives a crash right after');
$node->safe_psql('postgres', "SELECT etl_wait_run($run)");
$node->safe_psql('postgres', 'CHECKPOINT');

# resumes: each claim is counted even when the server goes down right after it
for my $i (1 .. 2)
{
	$node->safe_psql('postgres', "SELECT etl_resume_run($run, timeout := 60)");
	$node->stop('immediate');
	$node->start;
	is($node->safe_psql('postgres', "SELECT resume_count FROM dw_etl_runs WHERE run_id = $run"), $i,
		"resume $i is counted after a crash right after its claim");
	is($node->safe_psql('postgres', "SELECT etl_wait_run($run, 0)"), 'interrupted',
		"resume $i: the run is interrupted, not back to where it was");
	$node->safe_psql('postgres', 'CHECKPOINT');
}

$node->stop;
$mock->kill_kill;
done_testing();
